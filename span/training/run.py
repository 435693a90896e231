"""`span train`: one model variant, one seed, on a cohort's splits and features."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import span
from span.data.splits import EXCLUDED, check_classes, read_splits
from span.device import resolve_device
from span.errors import SpanError
from span.memory import reduce_heap_fragmentation
from span.models import build_model
from span.outputs import CHECKPOINT, FEATURE_STATS, METRICS_JSON, TEST_PREDICTIONS_CSV
from span.run_files import read_run_metrics, write_run_metrics, write_test_predictions
from span.settings.stages import TrainSettings
from span.training.bags import Bag, FeatureStats, feature_statistics, inspect_cohort
from span.training.feeder import BagFeeder
from span.training.trainer import TrainConfig, predict, seed_everything, train_model

log = logging.getLogger(__name__)
_DEFAULT = TrainSettings()


@dataclass(frozen=True)
class TrainingJob:
    """One `span train` run: a model variant and seed (in `config`) on a cohort's splits and
    features; its outputs go to `out`. `device` and `cache_mb` change speed only."""

    splits: Path
    features_dir: Path
    classes: list[str]
    model: str
    out: Path
    config: TrainConfig = field(default_factory=TrainConfig)
    hparams: dict = field(default_factory=dict)
    variant: str = ""  # its name in reports; default: the model
    device: str = _DEFAULT.device
    cache_mb: float = _DEFAULT.cache_mb
    add_runtime_of: Path | None = None  # a metrics.json whose runtime is added (MHIM teacher)


def split_bags(
    splits_tsv: Path, features_dir: Path, classes: list[str]
) -> tuple[dict[str, list[Bag]], list[tuple[str, str]]]:
    """Bags of the train, val and test sets (features at `<features_dir>/<slide_id>.h5`), and
    the (slide_id, reason) of the slides the split excluded."""
    sets: dict[str, list[Bag]] = {"train": [], "val": [], "test": []}
    excluded = []
    for row in read_splits(splits_tsv):
        if row.split == EXCLUDED:
            excluded.append((row.slide_id, row.excluded))
            continue
        if row.label not in classes:
            raise SpanError(
                splits_tsv,
                f"label {row.label!r} of {row.slide_id} is not one of {classes}",
                "re-run the split step after fixing the sample sheet",
            )
        bag = Bag(row.slide_id, features_dir / f"{row.slide_id}.h5", classes.index(row.label))
        sets[row.split].append(bag)
    return sets, excluded


def device_description(device: torch.device) -> str:
    """`cuda:0 (NVIDIA H100 ...)` or `cpu (2 threads)`."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def run_training(job: TrainingJob) -> dict:
    """Train, keep the best checkpoint, predict the test set; returns `metrics.json`'s content.
    Up to `job.cache_mb` of the cohort's features stay in memory between epochs.

    Writes checkpoint.pt, feature_stats.pt (identity unless `config.standardize`),
    history.csv, test_predictions.csv and metrics.json into `job.out`."""
    config, classes, out_dir = job.config, job.classes, job.out
    reduce_heap_fragmentation()
    out_dir.mkdir(parents=True, exist_ok=True)
    sets, split_excluded = split_bags(job.splits, job.features_dir, classes)
    cohort = inspect_cohort([b for bags in sets.values() for b in bags])
    gone = {slide for slide, _ in cohort.excluded}
    excluded = split_excluded + cohort.excluded
    for slide, reason in excluded:
        log.warning("%s excluded from training and evaluation: %s", slide, reason)
    sets = {name: [b for b in bags if b.slide_id not in gone] for name, bags in sets.items()}
    labels = {name: [classes[b.label] for b in bags] for name, bags in sets.items()}
    split_warnings = check_classes(labels, classes, job.splits, len(excluded))
    for warning in split_warnings:
        log.warning("%s", warning)
    if not sets["val"]:
        log.warning("no validation slides: the last epoch's model is kept")
    seed_everything(config.seed)
    try:
        model = build_model(job.model, cohort.feature_dim, len(classes), **job.hparams)
    except ValueError as exc:
        raise SpanError(None, str(exc), "fix the variant in the experiments config") from exc
    dev = resolve_device(job.device)
    stats = (
        feature_statistics(sets["train"], cohort.feature_dim)
        if config.standardize
        else FeatureStats.identity(cohort.feature_dim)
    )
    stats.save(out_dir / FEATURE_STATS)
    feeder = BagFeeder(cohort.feature_dim, dev, stats, job.cache_mb)
    summary = train_model(model, sets["train"], sets["val"], len(classes), config, out_dir, feeder)
    model.load_state_dict(torch.load(out_dir / CHECKPOINT, map_location=dev, weights_only=True))
    probs = predict(model, sets["test"], feeder)
    write_test_predictions(out_dir / TEST_PREDICTIONS_CSV, sets["test"], probs, classes)
    metrics = {
        "model": job.model,
        "variant": job.variant or job.model,
        "seed": config.seed,
        "hparams": job.hparams,
        "training": asdict(config),
        "device": device_description(dev),
        "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "feature_dim": cohort.feature_dim,
        "encoder": cohort.encoder,
        "encoder_weights": cohort.weights,
        "slides": {name: len(bags) for name, bags in sets.items()},
        "excluded": excluded,
        "split_warnings": split_warnings,
        "bad_tiles": cohort.damaged,
        "software": f"span-wsi {span.__version__}",
        **summary,
    }
    if job.add_runtime_of is not None:
        other = read_run_metrics(job.add_runtime_of)
        metrics["runtime_per_epoch_s"] += other["runtime_per_epoch_s"]
        metrics["runtime_note"] = (
            f"includes training its teacher ({other['variant']}, same seed): "
            f"{other['runtime_per_epoch_s']:.2f} s per epoch, as in the paper"
        )
    write_run_metrics(out_dir / METRICS_JSON, metrics)
    return metrics
