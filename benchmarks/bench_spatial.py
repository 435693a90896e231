"""Spatial benchmark: SPAN against permutation-invariant MIL on tasks that only arrangement
decides (issue 11).

For each task x cohort size x feature width, writes a features-only cohort (`span
spatial-cohort`: features HDF5 + sample sheet), splits it with the paper's protocol (seed 42:
test = 1/3, validation = 15% of the rest), trains SPAN and ABMIL with `span train`'s code and
defaults for every seed, fits a mean-pool logistic regression on the same splits, and prints
test AUC per seed, mean +- sd, the paired t-test over seeds and DeLong's test (seed-averaged
predictions) of SPAN against ABMIL, and whether the goals hold:

- SPAN test AUC >= 0.95 on every seed at ~270 training slides, >= 0.90 at ~70;
- ABMIL and mean pooling <= 0.60 (at chance by construction: both classes share every
  instance distribution);
- paired t-test SPAN vs ABMIL p < 0.01.

Runs are resumable: a finished run (its metrics.json) with the same training options is not
trained again. Each run is a worker process with one torch thread.

    python benchmarks/bench_spatial.py                    # the full table (hours on 2 cores)
    python benchmarks/bench_spatial.py --tasks clumped --slides 120 --dims 1024 --seeds 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from span.synthetic import TASK_NAMES  # noqa: E402

MODELS = ("span", "abmil")
GOAL_SPAN = {"large": 0.95, "small": 0.90}  # min over seeds; "large" = >= 200 training slides
GOAL_IID = 0.60
GOAL_P = 0.01


def cohort_dir(work: Path, task: str, slides: int, dim: int) -> Path:
    return work / f"{task}-{slides}-{dim}d"


def prepare(work: Path, task: str, slides: int, dim: int) -> Path:
    """Write the cohort (unless written with the same spec) and its splits; returns its folder."""
    from span.data.samplesheet import load_sample_sheet
    from span.data.splits import make_splits, write_splits
    from span.synthetic.feature_cohort import CohortSpec, write_cohort

    spec = CohortSpec(task, slides, dim)
    folder = cohort_dir(work, task, slides, dim)
    marker = folder / "spec.json"
    if not marker.exists() or json.loads(marker.read_text()) != asdict(spec):
        write_cohort(spec, folder)
        marker.write_text(json.dumps(asdict(spec)))
    samples = load_sample_sheet(folder / "samples.tsv", spec.classes)
    rows, _ = make_splits(samples, spec.classes, seed=42)
    write_splits(rows, folder / "splits.tsv")
    return folder


def train_one(folder: Path, classes: list[str], model: str, seed: int) -> Path:
    """One `span train` run (the CLI's defaults) in this worker; returns its folder."""
    import torch

    from span.training.run import TrainingJob, run_training
    from span.training.trainer import TrainConfig

    torch.set_num_threads(1)
    out = folder / model / f"seed{seed}"
    config = TrainConfig(seed=seed)
    if _trained_with(out) != json.loads(json.dumps(asdict(config))):
        run_training(
            TrainingJob(folder / "splits.tsv", folder / "features", classes, model, out, config)
        )
    return out


def _trained_with(run: Path) -> dict | None:
    """The training options of a finished run (None if unfinished): runs made with other
    defaults are trained again."""
    from span.outputs import METRICS_JSON
    from span.run_files import read_run_metrics

    metrics = run / METRICS_JSON
    return read_run_metrics(metrics)["training"] if metrics.exists() else None


def test_predictions(run: Path, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(labels, P(last class)) of a run's test_predictions.csv, in slide order."""
    from span.outputs import TEST_PREDICTIONS_CSV
    from span.run_files import read_test_predictions

    _, y, probs = read_test_predictions(run / TEST_PREDICTIONS_CSV, classes)
    return np.array([classes[k] for k in y]), probs[:, -1]


def mean_pool_auc(folder: Path, classes: list[str]) -> float:
    """Logistic regression on each slide's mean feature (standardised), fitted on train + val."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from span.data.splits import read_splits
    from span.features.feature_file import read_feature_file

    x, y, test = [], [], []
    for row in read_splits(folder / "splits.tsv"):
        x.append(read_feature_file(folder / "features" / f"{row.slide_id}.h5").features.mean(0))
        y.append(classes.index(row.label))
        test.append(row.split == "test")
    x, y, test = np.array(x), np.array(y), np.array(test)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    model.fit(x[~test], y[~test])
    return float(roc_auc_score(y[test], model.predict_proba(x[test])[:, 1]))


def compare(folder: Path, classes: list[str], seeds: list[int]) -> dict:
    """Per-seed AUCs of each model, mean pooling, and SPAN vs ABMIL p-values."""
    from sklearn.metrics import roc_auc_score

    from span.evaluation.stats import delong_test, paired_ttest

    aucs, averaged = {}, {}
    for model in MODELS:
        probs = []
        for seed in seeds:
            labels, p = test_predictions(folder / model / f"seed{seed}", classes)
            y = (labels == classes[1]).astype(int)
            aucs.setdefault(model, []).append(float(roc_auc_score(y, p)))
            probs.append(p)
        averaged[model] = np.mean(probs, axis=0)
    t_p, t_why = paired_ttest(aucs["span"], aucs["abmil"])
    delong_p, *_, delong_why = delong_test(y, averaged["span"], averaged["abmil"])
    return {
        "auc": aucs,
        "meanpool": mean_pool_auc(folder, classes),
        "t_p": t_p,
        "t_test": _p_text(t_p, t_why),
        "delong": _p_text(delong_p, delong_why),
    }


def _p_text(p: float | None, why: str | None) -> str:
    return f"n/a ({why})" if p is None else f"{p:.2g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASK_NAMES), choices=TASK_NAMES)
    parser.add_argument(
        "--slides",
        nargs="+",
        type=int,
        default=[120, 480],
        help="slides per cohort: 120 gives 68 training slides, 480 gives 272",
    )
    parser.add_argument("--dims", nargs="+", type=int, default=[1024, 2048])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1 (default 5)")
    parser.add_argument("--workers", type=int, default=2, help="parallel runs (one thread each)")
    parser.add_argument("--work", default=str(ROOT / "results" / "spatial_benchmark"))
    args = parser.parse_args(argv)

    from span.synthetic.layouts import TASKS

    work, seeds = Path(args.work), list(range(args.seeds))
    cohorts = [(t, n, d) for n in args.slides for d in args.dims for t in args.tasks]
    print(f"spatial benchmark: {len(cohorts)} cohorts x {len(MODELS)} models x {len(seeds)} seeds")
    t0 = time.perf_counter()
    folders = {c: prepare(work, *c) for c in cohorts}
    print(f"cohorts written in {time.perf_counter() - t0:.0f} s under {work}")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
        jobs = [
            pool.submit(train_one, folders[c], list(TASKS[c[0]].classes), model, seed)
            for c in cohorts
            for seed in seeds
            for model in MODELS
        ]
        for done, job in enumerate(jobs, 1):
            run = job.result()
            minutes = (time.perf_counter() - t0) / 60
            print(f"[{done}/{len(jobs)}, {minutes:.0f} min] {run.relative_to(work)}", flush=True)
    return report(cohorts, folders, seeds)


def report(cohorts: list, folders: dict, seeds: list[int]) -> int:
    """Print the table and the goals; 0 when every goal holds."""
    from span.data.splits import read_splits
    from span.synthetic.layouts import TASKS

    header = f"{'task':<10} {'train':>5} {'dim':>5}  {'model':<9}" + "".join(
        f"{f'seed{s}':>7}" for s in seeds
    )
    print("\n" + header + f"{'mean +- sd':>16}")
    misses = []
    for c in cohorts:
        task, _, dim = c
        classes = list(TASKS[task].classes)
        n_train = sum(r.split == "train" for r in read_splits(folders[c] / "splits.tsv"))
        result = compare(folders[c], classes, seeds)
        for model in MODELS:
            a = result["auc"][model]
            print(
                f"{task:<10} {n_train:>5} {dim:>5}  {model:<9}"
                + "".join(f"{v:>7.3f}" for v in a)
                + f"{np.mean(a):>9.3f} +- {np.std(a, ddof=1) if len(a) > 1 else 0:.3f}"
            )
        print(f"{task:<10} {n_train:>5} {dim:>5}  {'meanpool':<9}{result['meanpool']:>7.3f}")
        print(
            f"{'':<23}SPAN vs ABMIL: paired t-test p = {result['t_test']}, "
            f"DeLong p = {result['delong']}"
        )
        goal = GOAL_SPAN["large" if n_train >= 200 else "small"]
        if min(result["auc"]["span"]) < goal:
            misses.append(f"{task}/{n_train}/{dim}: SPAN min AUC {min(result['auc']['span']):.3f}")
        worst_iid = max(max(result["auc"]["abmil"]), result["meanpool"])
        if worst_iid > GOAL_IID:
            misses.append(f"{task}/{n_train}/{dim}: i.i.d. baseline AUC {worst_iid:.3f}")
        if result["t_p"] is None or not result["t_p"] < GOAL_P:
            misses.append(f"{task}/{n_train}/{dim}: t-test p {result['t_test']}")
    print(
        f"\ngoals: SPAN AUC >= {GOAL_SPAN['large']} on every seed at >= 200 training slides, "
        f">= {GOAL_SPAN['small']} below; ABMIL and mean pooling <= {GOAL_IID}; "
        f"paired t-test p < {GOAL_P}"
    )
    print("all goals met" if not misses else "missed: " + "; ".join(misses))
    return 0 if not misses else 1


if __name__ == "__main__":
    sys.exit(main())
