"""Localisation: per slide, the AUC of a model's patch scores against the patches known to
decide its class (the demo's tumour patches; a spatial cohort's rare-type patches), i.e. the
chance that a deciding patch scores above a plain one. benchmarks/bench_localisation.py prints it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from span.data.samplesheet import Sample
from span.features.feature_file import read_feature_file
from span.inference.attribution import patch_scores
from span.inference.predict import load_trained
from span.outputs import METRICS_JSON
from span.run_files import read_run_metrics
from span.synthetic.layouts import OTHER, RARE
from span.synthetic.truth import TUMOUR_PATCH_FRACTION, patch_tumour_fraction, read_truth


@dataclass(frozen=True)
class SlideTruth:
    """Which of a slide's patches decide its class (`positive`) and which are plain
    (`negative`); patches that are neither (a sliver of tumour) are left out of its AUC."""

    slide_id: str
    label: str
    features: Path
    positive: np.ndarray  # (N,) bool, aligned with the features file's rows
    negative: np.ndarray


def slide_auc(scores: np.ndarray, truth: SlideTruth) -> float | None:
    """AUC of the scores, deciding patches against plain ones (None: one kind is missing)."""
    pos, neg = scores[truth.positive], scores[truth.negative]
    if not len(pos) or not len(neg):
        return None
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    return float(roc_auc_score(y, np.r_[pos, neg]))


def demo_truths(samples: Iterable[Sample], features_dir: Path, truth_dir: Path) -> list[SlideTruth]:
    """The demo slides' truth: tumour patches (at least `TUMOUR_PATCH_FRACTION` tumour) against
    patches without any, from `<truth_dir>/<slide>.truth.png` (`span.synthetic.truth`)."""
    out = []
    for s in samples:
        features = features_dir / f"{s.slide_id}.h5"
        fs = read_feature_file(features)
        patch_size0 = int(fs.attrs["patch_size_level0"])
        truth = read_truth(truth_dir / f"{s.slide_id}.truth.png")
        fraction = patch_tumour_fraction(truth, fs.coords, patch_size0)
        out.append(
            SlideTruth(
                s.slide_id, s.label, features, fraction >= TUMOUR_PATCH_FRACTION, fraction == 0
            )
        )
    return out


def spatial_truths(cohort: Path, samples: Iterable[Sample]) -> list[SlideTruth]:
    """A spatial cohort's truth from its `layouts.npz`: the rare type's patches (and, in the
    `distance` task, whose label is where two regions lie, the other region's too) against
    every other patch."""
    layouts = np.load(cohort / "layouts.npz")
    out = []
    for s in samples:
        types = layouts[s.slide_id]
        deciding = (types == RARE) | ((types == OTHER) & s.slide_id.startswith("distance"))
        out.append(SlideTruth(s.slide_id, s.label, Path(s.features), deciding, ~deciding))
    return out


def run_localisation(
    run: Path, truths: list[SlideTruth], n_classes: int, methods: Iterable[str], device: str
) -> dict[str, dict[str, float | None]]:
    """Per method, each slide's AUC for one training run (its metrics.json names the model),
    scores toward the class the run predicts for the slide."""
    metrics = read_run_metrics(run / METRICS_JSON)
    dev = torch.device(device)
    trained = load_trained(
        run, metrics["model"], metrics["hparams"], metrics["feature_dim"], n_classes, dev
    )
    out: dict[str, dict[str, float | None]] = {m: {} for m in methods}
    for truth in truths:
        fs = read_feature_file(truth.features, with_attrs=False)
        features = trained.standardise(torch.from_numpy(fs.features).float().to(dev))
        grid = torch.from_numpy(fs.grid).long().to(dev)
        for method in out:
            _, scores = patch_scores(trained.net, features, grid, method)
            out[method][truth.slide_id] = slide_auc(scores.cpu().numpy(), truth)
    return out
