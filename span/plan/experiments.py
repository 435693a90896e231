"""Experiments: the config's lists of model variants, checked whole before any job runs.

A variant is a registered model with a recipe (span/plan/recipes.py), hyperparameters and
training overrides over it, and optionally a teacher (MHIM). Everything that can be checked
without torch is checked here: the model, the variant's name, its training overrides (each a
`span train` option that changes results, with its type and bounds), its teacher; `span check`
builds every variant's model (on PyTorch's meta device) for its hyperparameters. Standard
library only: the Snakefile imports it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from span.errors import SpanError
from span.models.registry import MODELS
from span.plan.recipes import RECIPES
from span.settings.options import declared
from span.settings.stages import TrainSettings


@dataclass(frozen=True)
class Variant:
    """One row of an experiment: `model` trained with `hparams` and `training` overrides
    (its recipe's, then its own)."""

    name: str
    model: str
    label: str = ""
    hparams: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    teacher: str | None = None
    recipe: str = "default"


def _invalid(where: str, problem: str, fix: str) -> SpanError:
    return SpanError(None, f"invalid config, {where}: {problem}", fix)


def training_overrides(where: str, overrides: Mapping) -> dict:
    """Training overrides (a variant's `training:`, or a benchmark's options), each a
    result-changing option of `span train` whose value has the option's type and bounds;
    `where` names the mapping in errors."""
    options = {d.name: d for d in declared(TrainSettings) if not d.option.speed_only}
    for key, value in overrides.items():
        d = options.get(key)
        if d is None:
            raise _invalid(
                where,
                f"no option {key}",
                f"a variant may set {', '.join(sorted(options))} (see config/README.md)",
            )
        kinds = tuple(k for k in d.kinds if k is not type(None))
        typed = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            typed = True
        if not typed:
            names = " or ".join(k.__name__ for k in kinds)
            raise _invalid(f"{where}.{key}", f"{value!r} is not {names}", "fix the value")
        if problem := d.problem(value):
            raise _invalid(f"{where}.{key}", problem, "fix the value")
    return dict(overrides)


def parse_experiment(
    name: str, entries: Sequence[Mapping], recipe: str = "default"
) -> dict[str, Variant]:
    """An experiment's variants by name, in config order (the first is the reference);
    `recipe` is the config's, which a variant's own `recipe` replaces."""
    variants: dict[str, Variant] = {}
    for entry in entries:
        entry = dict(entry)
        model = entry.get("model")
        vname = entry.get("name") or model
        where = f"experiments.{name}.{vname}"
        if model not in MODELS:
            raise _invalid(where, f"unknown model {model!r}", f"choose one of {', '.join(MODELS)}")
        if vname in variants:
            raise _invalid(where, "two variants share this name", "give one a `name:`")
        hparams = entry.get("hparams") or {}
        if not isinstance(hparams, Mapping):
            raise _invalid(f"{where}.hparams", f"{hparams!r} is not a mapping", "use {key: value}")
        own_recipe = entry.get("recipe") or recipe
        if own_recipe not in RECIPES:
            known = ", ".join(RECIPES)
            raise _invalid(f"{where}.recipe", f"unknown recipe {own_recipe!r}", f"use {known}")
        hparams, training = RECIPES[own_recipe].apply(
            model, hparams, training_overrides(f"{where}.training", entry.get("training") or {})
        )
        variants[vname] = Variant(
            name=vname,
            model=model,
            label=entry.get("label") or "",
            hparams=hparams,
            training=training,
            teacher=entry.get("teacher"),
            recipe=own_recipe,
        )
    for v in variants.values():
        if v.teacher and v.teacher not in variants:
            raise _invalid(
                f"experiments.{name}.{v.name}",
                f"teacher {v.teacher!r} is not a variant of {name}",
                f"name one of {', '.join(variants)}",
            )
    return variants


def parse_experiments(
    experiments: Mapping[str, Sequence[Mapping]], recipe: str = "default"
) -> dict[str, dict[str, Variant]]:
    """Every experiment of the config, checked; `recipe` is the config's."""
    return {name: parse_experiment(name, entries, recipe) for name, entries in experiments.items()}


def sweep_parameter(variants: Mapping[str, Variant]) -> str | None:
    """The hyperparameter an experiment sweeps, or None: at least two variants of one model,
    no teacher, the same training, and one numeric hyperparameter set to distinct values with
    nothing else differing (e.g. window_sweep)."""
    vs = list(variants.values())
    if len(vs) < 2 or len({v.model for v in vs}) != 1 or any(v.teacher for v in vs):
        return None
    if len({json.dumps(v.training, sort_keys=True) for v in vs}) != 1:
        return None
    if len({frozenset(v.hparams) for v in vs}) != 1:
        return None
    varying = [k for k in vs[0].hparams if len({json.dumps(v.hparams[k]) for v in vs}) > 1]
    if len(varying) != 1:
        return None
    values = [v.hparams[varying[0]] for v in vs]
    numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x in values)
    return varying[0] if numeric and len(set(values)) == len(values) else None


def model_checks(experiments: Mapping[str, Mapping[str, Variant]]) -> list[dict]:
    """What `span check --variants` builds: each distinct (model, hparams) once, with where it
    comes from (the first variant that uses it)."""
    seen: dict[str, dict] = {}
    for name, variants in experiments.items():
        for v in variants.values():
            key = json.dumps([v.model, v.hparams], sort_keys=True)
            seen.setdefault(
                key,
                {
                    "where": f"experiments.{name}.{v.name}.hparams",
                    "model": v.model,
                    "hparams": v.hparams,
                },
            )
    return list(seen.values())
