"""`span predict`: class probabilities of every slide with features (labelled or not), per
seed and averaged over seeds, and attention heatmaps from the seed-averaged patch scores."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from span.atomic import write_png
from span.data.qc_summary import read_exclusions
from span.data.samplesheet import load_sample_sheet
from span.device import resolve_device
from span.evaluation.heatmap import render_heatmap
from span.h5io import open_h5, read_attrs
from span.models import build_model
from span.outputs import CHECKPOINT, FEATURE_STATS
from span.training.bags import Bag, FeatureStats, inspect_cohort
from span.training.feeder import BagFeeder
from span.training.run_files import write_predictions

log = logging.getLogger(__name__)


def run_prediction(
    samples_tsv: Path,
    classes: list[str],
    features_dir: Path,
    model_name: str,
    hparams: dict,
    run_dirs: list[Path],
    out_csv: Path,
    heatmap_dir: Path | None = None,
    max_side: int = 1200,
    device: str = "auto",
    qc: Path | None = None,
    cache_mb: float = 0.0,
) -> None:
    """Predict every slide of the sheet with each run's best checkpoint; write the CSV (rows
    per seed, then `mean`) and, with `heatmap_dir`, one PNG per slide that has a slide file.
    Slides that `qc` (qc/summary.tsv) excludes are not predicted. Up to `cache_mb` of features
    are read once for all the runs."""
    samples = load_sample_sheet(samples_tsv, classes)
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
    dev = resolve_device(device)
    feeder = BagFeeder(cohort.feature_dim, dev, cache_mb=cache_mb)  # raw: each run standardises
    probs = np.zeros((len(run_dirs), len(bags), len(classes)))
    scores: dict[str, np.ndarray] = {}
    grids: dict[str, np.ndarray] = {}
    for r, run in enumerate(run_dirs):
        model = build_model(model_name, cohort.feature_dim, len(classes), **hparams).to(dev)
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
                patch = out.patch_scores.float().cpu().numpy() / len(run_dirs)
                scores[bag.slide_id] = scores.get(bag.slide_id, 0) + patch
    write_predictions(out_csv, bags, probs, [d.name for d in run_dirs], classes)
    for slide, reason in cohort.excluded:
        log.warning("%s: no prediction (%s)", slide, reason)
    if heatmap_dir is None:
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
            max_side,
        )
        write_png(heatmap_dir / f"{bag.slide_id}.png", image)
        drawn.add(f"{bag.slide_id}.png")
    for old in heatmap_dir.glob("*.png"):  # an earlier run's, of a slide no longer predicted
        if old.name not in drawn:
            old.unlink()


def patch_size_level0(features: Path) -> int:
    """The level-0 patch side recorded in a features file (attributes only)."""
    with open_h5(features, "re-run feature extraction for this slide") as f:
        return int(read_attrs(f)["patch_size_level0"])
