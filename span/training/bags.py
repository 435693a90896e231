"""Slides as training bags: features read lazily, one slide at a time, with cohort checks.

A cohort of hundreds of slides never sits in memory: each access reads one features file.
Before training, every file's attributes are checked so that mixed encoders or widths fail
with one clear message instead of a shape error deep in a model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from span.errors import SpanError
from span.features.feature_file import read_feature_file
from span.h5io import open_h5, read_attrs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bag:
    """One labelled (or unlabelled) slide and where its features are."""

    slide_id: str
    features: Path
    label: int | None  # class index; None = inference only


@dataclass
class CohortInfo:
    """What every features file of a cohort agrees on, and the slides left out."""

    feature_dim: int
    encoder: str
    weights: str
    excluded: list[tuple[str, str]]  # (slide_id, reason)


def inspect_cohort(bags: list[Bag]) -> CohortInfo:
    """Check that all features files share encoder, layer and width; drop empty slides."""
    fix = "extract every slide with the same encoder and layer (features section of the config)"
    kinds: dict[tuple, list[str]] = {}
    excluded = []
    weights = set()
    for bag in bags:
        with open_h5(bag.features, "re-run feature extraction for this slide") as f:
            if "features" not in f:
                raise SpanError(bag.features, "no `features` dataset", "re-run feature extraction")
            shape = f["features"].shape
            attrs = read_attrs(f)
        if len(shape) != 2:
            raise SpanError(bag.features, f"features have shape {shape}", "re-run extraction")
        if shape[0] == 0:
            excluded.append((bag.slide_id, "no tissue patches"))
            continue
        key = (attrs.get("encoder", "unknown"), attrs.get("layer", ""), int(shape[1]))
        kinds.setdefault(key, []).append(bag.slide_id)
        weights.add(str(attrs.get("weights", "unknown")))
    if not kinds:
        raise SpanError(None, "no slide with tissue patches in this cohort", "check the QC table")
    if len(kinds) > 1:
        described = "; ".join(
            f"{enc} {layer} {dim}-d: {len(ids)} slide(s), e.g. {ids[0]}"
            for (enc, layer, dim), ids in kinds.items()
        )
        raise SpanError(None, f"the cohort's features mix encoders or widths ({described})", fix)
    (encoder, layer, dim), _ = next(iter(kinds.items()))
    return CohortInfo(
        dim, f"{encoder}-{layer}" if layer else encoder, ", ".join(sorted(weights)), excluded
    )


def load_bag(bag: Bag, feature_dim: int, device: torch.device):
    """(features float32 (N, D), grid int64 (N, 2)) of one slide, on `device`."""
    fs = read_feature_file(bag.features, expected_dim=feature_dim)
    features = torch.from_numpy(fs.features).float().to(device)
    grid = torch.from_numpy(fs.grid).long().to(device)
    return features, grid
