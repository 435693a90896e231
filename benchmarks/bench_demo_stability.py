"""How much of the demo's table is floating-point luck: each model of the demo's `main`, trained
on the demo's features as they are and on copies nudged at the level of float32 rounding (every
value times 1 + 1e-6 x N(0, 1), a different draw per copy), 3 seeds each, as `make demo` trains
them. A machine with other CPU kernels computes each step with other roundings; a model whose
test AUC moves under these nudges moves between machines by the same mechanism.

Needs a finished demo (`make demo`, or --results pointing at one). Prints, per model and seed,
the test AUC on the features as they are and its range over the nudged copies, and which
conclusions hold on every copy.

    python benchmarks/bench_demo_stability.py [--results results/demo] [--copies 4] [--workers 2]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
NUDGE = 1e-6


def nudged_copy(features: Path, out: Path, seed: int) -> Path:
    """The features folder with every value times 1 + NUDGE x N(0, 1) (seed 0: unchanged)."""
    import h5py

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for src in sorted(features.glob("*.h5")):
        dst = out / src.name
        shutil.copy(src, dst)
        if seed:
            with h5py.File(dst, "r+") as f:
                x = f["features"][:]
                noise = rng.standard_normal(x.shape).astype(np.float32)
                f["features"][...] = x * (1 + NUDGE * noise)
    return out


def train(args: tuple) -> tuple[str, int, int, float]:
    """One training run (one thread), as the demo's `span train` job; its test AUC."""
    splits, features, classes, variant, copy, seed, out = args
    import torch
    from sklearn.metrics import roc_auc_score

    from span.outputs import TEST_PREDICTIONS_CSV
    from span.run_files import read_test_predictions
    from span.training.augment import Augmentation
    from span.training.run import TrainingJob, run_training
    from span.training.trainer import TrainConfig

    torch.set_num_threads(1)
    training = dict(variant["training"])
    augment = Augmentation(
        **{k: training.pop(k) for k in ("flips", "translate", "patch_drop") if k in training}
    )
    config = TrainConfig(**training, augment=augment, seed=seed)
    job = TrainingJob(
        splits, features, classes, variant["model"], out, config, variant["hparams"], device="cpu"
    )
    run_training(job)
    _, y, probs = read_test_predictions(out / TEST_PREDICTIONS_CSV, classes)
    return variant["name"], copy, seed, float(roc_auc_score(y == 1, probs[:, 1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO / "results" / "demo")
    parser.add_argument("--copies", type=int, default=4, help="nudged copies of the features")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    classes, seeds = config["classes"], config["seeds"]
    training = {
        k: v for k, v in config["training"].items() if k not in ("device", "threads", "cache_mb")
    }
    variants = [
        {
            "name": e.get("name", e["model"]),
            "model": e["model"],
            "hparams": e.get("hparams", {}),
            "training": {**training, **e.get("training", {})},
        }
        for e in config["experiments"]["main"]
    ]
    features = next((args.results / "features").iterdir())
    splits = args.results / "splits.tsv"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        copies = [nudged_copy(features, root / f"copy{c}", c) for c in range(args.copies + 1)]
        jobs = [
            (splits, copies[c], classes, v, c, s, root / "runs" / f"{v['name']}-{c}-{s}")
            for v in variants
            for c in range(args.copies + 1)
            for s in seeds
        ]
        with ProcessPoolExecutor(args.workers) as pool:
            results = list(pool.map(train, jobs))
    auc = {(name, copy, seed): value for name, copy, seed, value in results}
    print(
        f"demo features of {args.results}, {len(copies) - 1} copies nudged by {NUDGE:g} x N(0, 1) "
        f"relative; test AUC per seed: as they are [min-max over the copies]"
    )
    for v in variants:
        cells = []
        for s in seeds:
            nudged = [auc[(v["name"], c, s)] for c in range(1, args.copies + 1)]
            cells.append(f"{auc[(v['name'], 0, s)]:.3f} [{min(nudged):.3f}-{max(nudged):.3f}]")
        print(f"{v['name']:<10}" + "  ".join(f"{c:>22}" for c in cells))
    reference = variants[0]["name"]
    for v in variants[1:]:
        ahead = all(
            auc[(reference, c, s)] > auc[(v["name"], c, s)]
            for c in range(args.copies + 1)
            for s in seeds
        )
        print(f"{reference} ahead of {v['name']} on every seed of every copy: {ahead}")


if __name__ == "__main__":
    main()
