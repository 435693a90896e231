"""Config checks that need no torch: schema errors as one line, schema keys that no settings
class declares, the encoder and its output against the registry, and the names the config
refers to (experiments to run, heatmap variants)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from span.errors import SpanError
from span.features.registry import ENCODERS, unknown_output, weights_kinds
from span.settings.options import declared
from span.settings.stages import SECTIONS


def schema_error(text: str) -> str:
    """Snakemake's multi-line jsonschema report -> `where: what` on one line."""
    what = re.search(r"ValidationError: (.*)", text)
    where = re.search(r"On instance((?:\[[^]]*\])*)", text)
    key = ".".join(re.findall(r"\['?([^]']*)'?\]", where.group(1))) if where else ""
    what = what.group(1) if what else text
    allowed = re.search(r"'description': '([^']*)'", text)  # a pattern's readable form
    if allowed and " does not match " in what:
        what = f"{what.split(' does not match ')[0]} is not valid; use {allowed.group(1)}"
    return f"{key or 'config'}: {what}"


def check_schema_declared(schema: Mapping) -> None:
    """Every key of a stage section of the schema is an option of span/settings/stages.py, so
    it reaches its command: a key without one fails at start-up, not inside a job."""
    for section, classes in SECTIONS.items():
        options = {d.name for cls in classes for d in declared(cls)}
        for key in schema["properties"][section]["properties"]:
            if key not in options:
                raise SpanError(
                    None,
                    f"config schema key {section}.{key} is not declared in span/settings/"
                    f"stages.py (one of {', '.join(c.__name__ for c in classes)}), so no "
                    "command takes it",
                    'declare it there (docs/architecture.md, "Adding an option")',
                )


def resolve_encoder(features: Mapping) -> str:
    """The encoder's output to use (a null `layer` is the published one), after checking the
    encoder, the output and the kind of weights against the registry."""
    info = ENCODERS.get(features["encoder"])
    if info is None:
        raise SpanError(
            None,
            f"invalid config, features.encoder: unknown encoder {features['encoder']!r}",
            f"choose one of {', '.join(ENCODERS)}",
        )
    layer = features["layer"] or info.default_output
    if layer not in info.outputs:
        reason, fix = unknown_output(info, layer)
        raise SpanError(None, f"invalid config, features.layer: {reason}", fix)
    weights = features["weights"]
    named = weights == "hf-hub" or weights.partition(":")[0] == "imagenet"
    if named and weights not in weights_kinds(info):
        raise SpanError(
            None,
            f"invalid config, features.weights: {info.name} has no {weights} weights",
            f"use {', '.join(weights_kinds(info))} or a checkpoint path",
        )
    return layer


def feature_width(features: Mapping, layer: str) -> int:
    """The width of the configured encoder's output (the registry's)."""
    return ENCODERS[features["encoder"]].outputs[layer].dim


def check_names(config: Mapping, experiments: Mapping[str, Mapping]) -> list[str]:
    """The experiments to build (`run_experiments`, null = all), after checking that they and
    the heatmap variants (`predict.heatmaps`) exist."""
    run = list(config["run_experiments"] or experiments)
    for name in run:
        if name not in experiments:
            raise SpanError(
                None,
                f"invalid config, run_experiments: {name!r} is not an experiment",
                f"choose from {', '.join(experiments)}",
            )
    variants = sorted({v for variants in experiments.values() for v in variants})
    missing = sorted(set(config["predict"]["heatmaps"]) - set(variants))
    if missing:
        raise SpanError(
            None,
            "invalid config, predict.heatmaps: no experiment has a variant named "
            + ", ".join(map(repr, missing)),
            f"choose from {', '.join(variants)}",
        )
    return run
