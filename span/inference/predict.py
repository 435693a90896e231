"""`span predict`: class probabilities of every slide with features (labelled or not), per
seed and averaged over seeds, and attention heatmaps from the seed-averaged patch scores."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from span.atomic import write_png
from span.data.qc_summary import read_exclusions
from span.data.samplesheet import load_sample_sheet
from span.device import resolve_device
from span.h5io import open_h5, read_attrs
from span.inference.heatmap import render_heatmap
from span.models import build_model
from span.outputs import CHECKPOINT, FEATURE_STATS
from span.run_files import write_predictions
from span.settings.stages import PredictSettings, TrainSettings
from span.training.bags import Bag, FeatureStats, inspect_cohort
from span.training.feeder import BagFeeder

log = logging.getLogger(__name__)
_PREDICT, _TRAIN = PredictSettings(), TrainSettings()


@dataclass(frozen=True)
class PredictionJob:
    """One `span predict` run: a variant's seed runs over every slide of a sample sheet, with
    its predictions written to `out` and, with `heatmaps`, a heatmap per slide there."""

    samples: Path
    classes: list[str]
    features_dir: Path
    model: str
    runs: list[Path]
    out: Path
    hparams: dict = field(default_factory=dict)
    heatmaps: Path | None = None
    heatmap_max_side: int = _PREDICT.heatmap_max_side
    qc: Path | None = None  # qc/summary.tsv: its excluded slides are not predicted
    device: str = _TRAIN.device
    cache_mb: float = _TRAIN.cache_mb


def run_prediction(job: PredictionJob) -> None:
    """Predict every slide of the sheet with each run's best checkpoint; write the CSV (rows
    per seed, then `mean`) and, with `job.heatmaps`, one PNG per slide that has a slide file.
    Up to `job.cache_mb` of features are read once for all the runs."""
    classes, features_dir, qc = job.classes, job.features_dir, job.qc
    samples = load_sample_sheet(job.samples, classes)
    if qc is not None:
        excluded = {e.slide_id: e.reason for e in read_exclusions(qc)}
        for slide_id, reason in excluded.items():
            log.warning("%s: no prediction (excluded: %s)", slide_id, reason)
        samples = [s for s in samples if s.slide_id not in excluded]
    bags = [
        Bag(
            s.slide_id,
            features_dir / f"{s.slide_id}.h5",
            classes.index(s.label) if s.label else None,
        )
        for s in samples
    ]
    cohort = inspect_cohort(bags)
    gone = {slide for slide, _ in cohort.excluded}
    bags = [b for b in bags if b.slide_id not in gone]
    dev = resolve_device(job.device)
    feeder = BagFeeder(cohort.feature_dim, dev, cache_mb=job.cache_mb)  # raw: each run standardises
    probs = np.zeros((len(job.runs), len(bags), len(classes)))
    scores: dict[str, np.ndarray] = {}
    grids: dict[str, np.ndarray] = {}
    for r, run in enumerate(job.runs):
        model = build_model(job.model, cohort.feature_dim, len(classes), **job.hparams).to(dev)
        stats = FeatureStats.load(run / FEATURE_STATS)
        mean, std = stats.mean.to(dev), stats.std.to(dev)
        model.load_state_dict(torch.load(run / CHECKPOINT, map_location=dev, weights_only=True))
        model.eval()
        with torch.no_grad():
            for b, features, grid in feeder(bags):
                bag = bags[b]
                grids[bag.slide_id] = grid.cpu().numpy()
                out = model((features - mean) / std, grid)
                probs[r, b] = out.logits.float().softmax(-1).cpu().numpy()
                patch = out.patch_scores.float().cpu().numpy() / len(job.runs)
                scores[bag.slide_id] = scores.get(bag.slide_id, 0) + patch
    write_predictions(job.out, bags, probs, [d.name for d in job.runs], classes)
    for slide, reason in cohort.excluded:
        log.warning("%s: no prediction (%s)", slide, reason)
    if job.heatmaps is None:
        return
    paths = {s.slide_id: s.path for s in samples}
    drawn = set()
    for bag in bags:
        if not paths[bag.slide_id]:
            continue
        image = render_heatmap(
            paths[bag.slide_id],
            grids[bag.slide_id],
            patch_size_level0(bag.features),
            scores[bag.slide_id],
            job.heatmap_max_side,
        )
        write_png(job.heatmaps / f"{bag.slide_id}.png", image)
        drawn.add(f"{bag.slide_id}.png")
    for old in job.heatmaps.glob("*.png"):  # an earlier run's, of a slide no longer predicted
        if old.name not in drawn:
            old.unlink()


def patch_size_level0(features: Path) -> int:
    """The level-0 patch side recorded in a features file (attributes only)."""
    with open_h5(features, "re-run feature extraction for this slide") as f:
        return int(read_attrs(f)["patch_size_level0"])
