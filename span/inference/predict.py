"""`span predict`: class probabilities of every slide with features (labelled or not), per
seed and averaged over seeds, and heatmaps with exports of the seed-averaged patch scores."""

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
from span.h5io import open_h5, read_attrs, require_datasets
from span.inference.attribution import meaning, patch_scores, resolve_method
from span.inference.exports import write_scores_geojson, write_scores_h5
from span.inference.heatmap import HeatmapCaption, figure_rgb, heatmap_figure
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
    its predictions written to `out` and, with `heatmaps`, per slide a heatmap PNG (when the
    slide file is known) and its patch scores as GeoJSON and HDF5 there."""

    samples: Path
    classes: list[str]
    features_dir: Path
    model: str
    runs: list[Path]
    out: Path
    hparams: dict = field(default_factory=dict)
    variant: str = ""  # the variant's name in titles (default: the model's)
    heatmaps: Path | None = None
    heatmap_max_side: int = _PREDICT.heatmap_max_side
    heatmap_scores: str = _PREDICT.heatmap_scores
    heatmap_top_k: int = _PREDICT.heatmap_top_k
    qc: Path | None = None  # qc/summary.tsv: its excluded slides are not predicted
    device: str = _TRAIN.device
    cache_mb: float = _TRAIN.cache_mb


def run_prediction(job: PredictionJob) -> None:
    """Predict every slide of the sheet with each run's best checkpoint; write the CSV (rows
    per seed, then `mean`) and, with `job.heatmaps`, each slide's heatmap and score exports.
    Up to `job.cache_mb` of features are read once for all the runs."""
    classes, qc = job.classes, job.qc
    samples = load_sample_sheet(job.samples, classes)
    if qc is not None:
        excluded = {e.slide_id: e.reason for e in read_exclusions(qc)}
        for slide_id, reason in excluded.items():
            log.warning("%s: no prediction (excluded: %s)", slide_id, reason)
        samples = [s for s in samples if s.slide_id not in excluded]
    bags = [
        Bag(
            s.slide_id,
            job.features_dir / f"{s.slide_id}.h5",
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
    models = [
        load_trained(run, job.model, job.hparams, cohort.feature_dim, len(classes), dev)
        for run in job.runs
    ]
    for r, trained in enumerate(models):
        with torch.no_grad():
            for b, features, grid in feeder(bags):
                logits = trained.net(trained.standardise(features), grid).logits
                probs[r, b] = logits.float().softmax(-1).cpu().numpy()
    write_predictions(job.out, bags, probs, [d.name for d in job.runs], classes)
    for slide, reason in cohort.excluded:
        log.warning("%s: no prediction (%s)", slide, reason)
    if job.heatmaps is not None:
        draw_heatmaps(job, samples, bags, probs.mean(axis=0), feeder, models)


def draw_heatmaps(
    job: PredictionJob,
    samples: list,
    bags: list[Bag],
    probs: np.ndarray,
    feeder: BagFeeder,
    models: list[TrainedModel],
) -> None:
    """Each bag's patch scores (mean over the runs, toward the class the seeds' mean `probs`
    predict) written as image and exports; files of slides no longer predicted are removed."""
    method = resolve_method(job.heatmap_scores, job.model)
    scores: dict[str, np.ndarray] = {}
    for trained in models:
        for b, features, grid in feeder(bags):
            target = int(probs[b].argmax())
            _, patch = patch_scores(
                trained.net, trained.standardise(features), grid, method, target
            )
            scores[bags[b].slide_id] = scores.get(bags[b].slide_id, 0) + patch.cpu().numpy()
    labels = {s.slide_id: s.label for s in samples}
    paths = {s.slide_id: s.path for s in samples}
    written = set()
    for b, bag in enumerate(bags):
        caption = HeatmapCaption(
            bag.slide_id,
            labels[bag.slide_id] or None,
            job.classes[int(probs[b].argmax())],
            float(probs[b].max()),
            job.variant or job.model,
            meaning(method, job.model),
        )
        written |= write_slide_scores(
            job, bag, paths[bag.slide_id], scores[bag.slide_id] / len(job.runs), caption
        )
    for old in job.heatmaps.iterdir():  # an earlier run's, of a slide no longer predicted
        if old.name not in written and old.name.endswith(SLIDE_OUTPUTS):
            old.unlink()


@dataclass(frozen=True)
class TrainedModel:
    """A run's best checkpoint in eval mode with its training features' statistics, which
    standardise the raw features it is given."""

    net: torch.nn.Module
    mean: torch.Tensor
    std: torch.Tensor

    def standardise(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / self.std


def load_trained(
    run: Path, model: str, hparams: dict, feature_dim: int, n_classes: int, dev: torch.device
) -> TrainedModel:
    """A run's trained model (its checkpoint and feature statistics) on `dev`."""
    net = build_model(model, feature_dim, n_classes, **hparams).to(dev)
    net.load_state_dict(torch.load(run / CHECKPOINT, map_location=dev, weights_only=True))
    stats = FeatureStats.load(run / FEATURE_STATS)
    return TrainedModel(net.eval(), stats.mean.to(dev), stats.std.to(dev))


#: The files each slide gets in the heatmaps folder.
SLIDE_OUTPUTS = (".png", ".geojson", ".h5")


def write_slide_scores(
    job: PredictionJob, bag: Bag, slide_path: str, scores: np.ndarray, caption: HeatmapCaption
) -> set[str]:
    """Write one slide's patch scores (GeoJSON, HDF5) and, when its slide file is known, its
    heatmap PNG into `job.heatmaps`; return the file names written."""
    coords, grid, patch_size0 = patch_positions(bag.features)
    about = {
        "slide_id": bag.slide_id,
        "variant": caption.model,
        "score": caption.meaning,
        "predicted": caption.predicted,
        "probability": caption.probability,
        "patch_size_level0": patch_size0,
    }
    out = job.heatmaps
    write_scores_geojson(out / f"{bag.slide_id}.geojson", coords, patch_size0, scores, about)
    write_scores_h5(out / f"{bag.slide_id}.h5", coords, grid, scores, about)
    if not slide_path:
        return {f"{bag.slide_id}.geojson", f"{bag.slide_id}.h5"}
    figure = heatmap_figure(
        slide_path,
        grid,
        coords,
        patch_size0,
        scores,
        caption,
        job.heatmap_max_side,
        job.heatmap_top_k,
    )
    write_png(out / f"{bag.slide_id}.png", figure_rgb(figure))
    return {f"{bag.slide_id}{suffix}" for suffix in SLIDE_OUTPUTS}


def patch_positions(features: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """Level-0 corners, grid cells and level-0 patch side recorded in a features file."""
    fix = "re-run feature extraction for this slide"
    with open_h5(features, fix) as f:
        require_datasets(f, features, ("coords", "grid"), fix)
        return f["coords"][:], f["grid"][:], int(read_attrs(f)["patch_size_level0"])
