"""Slides as training bags (where each slide's features are), with cohort checks.

`span.training.feeder` reads them (ahead, and kept in memory up to a budget). Before training,
every file's attributes are checked so that mixed encoders or widths fail with one clear message
instead of a shape error deep in a model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from span.atomic import save_torch
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
    damaged: list[tuple[str, int, float]]  # (slide_id, unreadable tiles left out, their share)


def inspect_cohort(bags: list[Bag]) -> CohortInfo:
    """Check that all features files share encoder, layer and width; drop empty slides; note the
    slides that lost unreadable tiles."""
    kinds: dict[tuple, list[str]] = {}
    excluded = []
    damaged = []
    weights = set()
    for bag in bags:
        with open_h5(bag.features, "re-run feature extraction for this slide") as f:
            if "features" not in f:
                raise SpanError(bag.features, "no `features` dataset", "re-run feature extraction")
            shape = f["features"].shape
            bad = f["bad_tiles"].shape[0] if "bad_tiles" in f else 0
            attrs = read_attrs(f)
        if len(shape) != 2:
            raise SpanError(bag.features, f"features have shape {shape}", "re-run extraction")
        if shape[0] == 0:
            excluded.append((bag.slide_id, "no tissue patches"))
            continue
        key = (attrs.get("encoder", "unknown"), attrs.get("layer", ""), int(shape[1]))
        kinds.setdefault(key, []).append(bag.slide_id)
        weights.add(str(attrs.get("weights", "unknown")))
        if bad:
            damaged.append((bag.slide_id, int(bad), float(attrs.get("bad_tile_share", 0.0))))
    if not kinds:
        raise SpanError(None, "no slide with tissue patches in this cohort", "check the QC table")
    if len(kinds) > 1:
        raise _mixed_kinds_error(kinds)
    (encoder, layer, dim), _ = next(iter(kinds.items()))
    name = f"{encoder}-{layer}" if layer else encoder
    return CohortInfo(dim, name, ", ".join(sorted(weights)), excluded, damaged)


#: What `span import-features` records for a file that does not say which encoder and layer.
_UNRECORDED = {"encoder": "imported", "layer": ""}


def _mixed_kinds_error(kinds: dict[tuple, list[str]]) -> SpanError:
    """The error for a cohort of several (encoder, layer, width) kinds; when they differ only by
    what imported files leave unrecorded, it names those slides and the config keys to set."""
    described = "; ".join(
        f"{' '.join(filter(None, (enc, layer)))} {dim}-d: {len(ids)} slide(s), e.g. {ids[0]}"
        for (enc, layer, dim), ids in kinds.items()
    )
    generic = SpanError(
        None,
        f"the cohort's features mix encoders or widths ({described})",
        "extract every slide with the same encoder and layer (features section of the config)",
    )
    if len({dim for *_, dim in kinds}) > 1:
        return generic
    settings, fields, unrecorded = [], [], set()
    for i, (field, placeholder) in enumerate(_UNRECORDED.items()):
        values = {kind[i] for kind in kinds}
        recorded = values - {placeholder}
        if len(recorded) > 1:
            return generic
        if len(values) > 1:  # one recorded value, and slides that do not record theirs
            fields.append(field)
            settings.append(f"features.import_{field}: {recorded.pop()}")
            unrecorded.update(
                s for kind, ids in kinds.items() if kind[i] == placeholder for s in ids
            )
    shown = ", ".join(sorted(unrecorded)[:3])
    return SpanError(
        None,
        f"{len(unrecorded)} slide(s) (e.g. {shown}) come from imported features files that do not "
        f"record their {' and '.join(fields)}, so they cannot be matched with the others "
        f"({described})",
        f"set {' and '.join(settings)} in the config if that is what made those files, or "
        "re-export them with `encoder` and `layer` attributes",
    )


@dataclass
class FeatureStats:
    """Per-dimension mean and standard deviation applied to every slide's features."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def identity(cls, dim: int) -> FeatureStats:
        return cls(torch.zeros(dim), torch.ones(dim))

    def save(self, path: Path) -> None:
        """Write atomically (loadable with `weights_only=True`)."""
        save_torch(path, {"mean": self.mean, "std": self.std})

    @classmethod
    def load(cls, path: Path) -> FeatureStats:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return cls(state["mean"], state["std"])


def feature_statistics(bags: list[Bag], feature_dim: int) -> FeatureStats:
    """Mean and std over all patches of `bags`, streamed one slide at a time (float64)."""
    total = torch.zeros(feature_dim, dtype=torch.float64)
    squares = torch.zeros(feature_dim, dtype=torch.float64)
    count = 0
    for bag in bags:
        fs = read_feature_file(bag.features, feature_dim, with_attrs=False)
        x = torch.from_numpy(fs.features).double()
        total += x.sum(0)
        squares += (x * x).sum(0)
        count += len(x)
    mean = total / max(count, 1)
    std = (squares / max(count, 1) - mean * mean).clamp_min(0).sqrt().clamp_min(1e-6)
    return FeatureStats(mean.float(), std.float())
