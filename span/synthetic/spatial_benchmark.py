"""The spatial benchmark's logic (benchmarks/bench_spatial.py): SPAN against
permutation-invariant MIL on cohorts that only arrangement decides, at several levels of
patch-type uncertainty, for the defaults or any variant of them.

For each task x cohort size x feature width x patch accuracy, writes a features-only cohort
(`span.synthetic.feature_cohort`), splits it with the paper's protocol (seed 42: test = 1/3,
validation = 15% of the rest), trains SPAN and ABMIL with `span train`'s code for every seed,
fits a mean-pool logistic regression on the same splits, and prints test AUC per seed, mean
+- sd, the paired t-test over seeds and DeLong's test (seed-averaged predictions) of SPAN
against ABMIL, and whether the goals hold where they apply (`Cohort.checked`).

A finished run (its metrics.json, newer than its cohort's files) with the same
hyperparameters and training options is not trained again; each run is a worker process
with one torch thread.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import suppress
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from span.data.samplesheet import load_sample_sheet
from span.data.splits import make_splits, read_splits, write_splits
from span.evaluation.stats import delong_test, paired_ttest
from span.features.feature_file import read_feature_file
from span.outputs import METRICS_JSON, TEST_PREDICTIONS_CSV
from span.plan.experiments import training_overrides
from span.plan.recipes import RECIPES
from span.preflight import check_variants
from span.run_files import read_run_metrics, read_test_predictions
from span.synthetic import level_name
from span.synthetic.feature_cohort import CohortSpec, write_cohort
from span.synthetic.layouts import TASKS
from span.training.augment import Augmentation
from span.training.run import TrainingJob, run_training
from span.training.trainer import TrainConfig

MODELS = ("span", "abmil")
GOAL_SPAN = {"large": 0.95, "small": 0.90}  # min over seeds; "large" = >= 200 training slides
GOAL_IID = 0.60
GOAL_P = 0.01
#: The goals are checked at this patch accuracy and above, and where types are certain.
GOAL_ACCURACY = 0.90
_WORDS = {"true": True, "false": False, "none": None, "null": None}


@dataclass(frozen=True)
class Cohort:
    """One cohort of the benchmark: a task, its slides, feature width and patch accuracy
    (None: certain)."""

    task: str
    slides: int
    dim: int
    accuracy: float | None

    @property
    def spec(self) -> CohortSpec:
        return CohortSpec(self.task, self.slides, self.dim, patch_accuracy=self.accuracy)

    @property
    def name(self) -> str:
        """Its folder's name: every option that tells it from the other cohorts."""
        return f"{self.task}-{self.slides}-{self.dim}d-{level_name(self.accuracy)}"

    @property
    def classes(self) -> list[str]:
        return list(TASKS[self.task].classes)

    @property
    def checked(self) -> bool:
        """Whether the goals apply (below GOAL_ACCURACY the rows are only printed)."""
        return self.accuracy is None or self.accuracy >= GOAL_ACCURACY


def parse_assignment(text: str) -> tuple[str, Any]:
    """`key=value` of a command line -> (key, value as true/false, none, int, float or text)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not key=value")
    if value.lower() in _WORDS:
        return key, _WORDS[value.lower()]
    for kind in (int, float):
        with suppress(ValueError):
            return key, kind(value)
    return key, value


def _word(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


@dataclass(frozen=True)
class Variant:
    """What the benchmark trains: hyperparameters per model and training overrides of every
    run, each checked (`make_variant`); empty, `span train`'s defaults."""

    hparams: Mapping[str, dict] = field(default_factory=dict)  # model -> constructor arguments
    training: dict = field(default_factory=dict)  # span train option -> value
    recipe: str = "default"  # span/plan/recipes.py: where the overrides above start from

    def run_name(self, model: str) -> str:
        """The folder of `model`'s runs: its name, its recipe unless the default, and every
        setting it overrides, so runs of different variants never share one."""
        settings = [*sorted(self.hparams.get(model, {}).items()), *sorted(self.training.items())]
        head = model if self.recipe == "default" else f"{model}@{self.recipe}"
        return "+".join([head, *(f"{k}={_word(v)}" for k, v in settings)])

    def model_hparams(self, model: str) -> dict:
        """`model`'s constructor arguments: the recipe's, then the overrides."""
        return RECIPES[self.recipe].apply(model, self.hparams.get(model, {}), {})[0]

    def config(self, seed: int) -> TrainConfig:
        """`span train`'s TrainConfig with the recipe's options and the overrides, for `seed`."""
        training = {**RECIPES[self.recipe].training, **self.training}
        augment = {f.name for f in fields(Augmentation)}
        return TrainConfig(
            seed=seed,
            augment=Augmentation(**{k: v for k, v in training.items() if k in augment}),
            **{k: v for k, v in training.items() if k not in augment},
        )


def make_variant(
    hparams: Mapping[str, dict], training: dict, dims: Sequence[int], recipe: str = "default"
) -> Variant:
    """A checked Variant: training overrides as an experiment's (span.plan.experiments), each
    model built with the recipe's and its own hyperparameters at every width on the meta
    device (SpanError: one line naming the option)."""
    hparams = {model: dict(values) for model, values in hparams.items() if values}
    variant = Variant(hparams, training_overrides("--train", training), recipe)
    checks = [
        {"where": f"--{model}-hparams", "model": model, "hparams": variant.model_hparams(model)}
        for model in MODELS
    ]
    for dim in dims:
        check_variants(checks, dim, 2)
    return variant


def prepare(work: Path, cohort: Cohort) -> Path:
    """Write the cohort (unless written with the same spec) and its splits; returns its folder."""
    spec, folder = cohort.spec, work / cohort.name
    marker = folder / "spec.json"
    if not marker.exists() or json.loads(marker.read_text()) != asdict(spec):
        write_cohort(spec, folder)
        marker.write_text(json.dumps(asdict(spec)))
    samples = load_sample_sheet(folder / "samples.tsv", spec.classes)
    rows, _ = make_splits(samples, spec.classes, seed=42)
    write_splits(rows, folder / "splits.tsv")
    return folder


def train_one(folder: Path, classes: list[str], model: str, seed: int, variant: Variant) -> Path:
    """One `span train` run of the variant in this worker (unless finished); returns its
    folder."""
    torch.set_num_threads(1)
    name = variant.run_name(model)
    out = folder / name / f"seed{seed}"
    config, hparams = variant.config(seed), variant.model_hparams(model)
    job = TrainingJob(
        folder / "splits.tsv", folder / "features", classes, model, out, config, hparams, name
    )
    if not _finished(out, job, (folder / "spec.json").stat().st_mtime):
        run_training(job)
    return out


def _finished(run: Path, job: TrainingJob, cohort_written: float) -> bool:
    """Whether `run` holds a run of `job` made on the cohort's current files: runs with other
    hyperparameters, options or defaults, or older than the cohort, are trained again."""
    metrics = run / METRICS_JSON
    if not metrics.exists() or metrics.stat().st_mtime < cohort_written:
        return False
    done = read_run_metrics(metrics)
    expected = json.loads(json.dumps([job.hparams, asdict(job.config)]))
    return [done["hparams"], done["training"]] == expected


def _test_scores(run: Path, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(labels, P(last class)) of a run's test_predictions.csv, in slide order."""
    _, y, probs = read_test_predictions(run / TEST_PREDICTIONS_CSV, classes)
    return np.array([classes[k] for k in y]), probs[:, -1]


def mean_pool_auc(folder: Path, classes: list[str]) -> float:
    """Logistic regression on each slide's mean feature (standardised), fitted on train + val."""
    x, y, test = [], [], []
    for row in read_splits(folder / "splits.tsv"):
        x.append(read_feature_file(folder / "features" / f"{row.slide_id}.h5").features.mean(0))
        y.append(classes.index(row.label))
        test.append(row.split == "test")
    x, y, test = np.array(x), np.array(y), np.array(test)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    model.fit(x[~test], y[~test])
    return float(roc_auc_score(y[test], model.predict_proba(x[test])[:, 1]))


def compare(folder: Path, classes: list[str], seeds: list[int], variant: Variant) -> dict:
    """Per-seed AUCs of each model, mean pooling, and SPAN vs ABMIL p-values."""
    aucs, averaged = {}, {}
    for model in MODELS:
        probs = []
        for seed in seeds:
            labels, p = _test_scores(folder / variant.run_name(model) / f"seed{seed}", classes)
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


def run_benchmark(
    work: Path, cohorts: list[Cohort], variants: list[Variant], seeds: list[int], workers: int
) -> int:
    """Write the cohorts, train every model and seed of each variant on each (resuming), print
    the table and the goals; 0 when every checked goal holds."""
    print(
        f"spatial benchmark: {len(cohorts)} cohorts x {len(variants)} variants x "
        f"{len(MODELS)} models x {len(seeds)} seeds"
    )
    print("runs: " + ", ".join(v.run_name(model) for v in variants for model in MODELS))
    t0 = time.perf_counter()
    folders = {c: prepare(work, c) for c in cohorts}
    print(f"cohorts written in {time.perf_counter() - t0:.0f} s under {work}")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        jobs = [
            pool.submit(train_one, folders[c], c.classes, model, seed, variant)
            for c in cohorts
            for seed in seeds
            for variant in variants
            for model in MODELS
        ]
        for done, job in enumerate(jobs, 1):
            run = job.result()
            minutes = (time.perf_counter() - t0) / 60
            print(f"[{done}/{len(jobs)}, {minutes:.0f} min] {run.relative_to(work)}", flush=True)
    return report(cohorts, folders, seeds, variants)


def report(
    cohorts: list[Cohort],
    folders: Mapping[Cohort, Path],
    seeds: list[int],
    variants: list[Variant],
) -> int:
    """Print the table (each variant's rows side by side per cohort) and the goals; 0 when
    every checked goal holds."""
    width = max(9, *(len(v.run_name(m)) for v in variants for m in MODELS))
    header = f"{'task':<10} {'train':>5} {'dim':>5} {'patch':>7}  {'model':<{width}}"
    print("\n" + header + "".join(f"{f'seed{s}':>7}" for s in seeds) + f"{'mean +- sd':>16}")
    misses = []
    for c in cohorts:
        n_train = sum(r.split == "train" for r in read_splits(folders[c] / "splits.tsv"))
        lead = f"{c.task:<10} {n_train:>5} {c.dim:>5} {level_name(c.accuracy):>7}  "
        for variant in variants:
            result = compare(folders[c], c.classes, seeds, variant)
            for model in MODELS:
                a = result["auc"][model]
                sd = np.std(a, ddof=1) if len(a) > 1 else 0.0
                cells = "".join(f"{v:>7.3f}" for v in a)
                name = variant.run_name(model)
                print(f"{lead}{name:<{width}}{cells}{np.mean(a):>9.3f} +- {sd:.3f}")
            print(
                f"{'':<31}{variant.run_name('span')} vs {variant.run_name('abmil')}: paired "
                f"t-test p = {result['t_test']}, DeLong p = {result['delong']}"
                + ("" if c.checked else " (goals not checked)")
            )
            if c.checked and variant == variants[0]:
                misses += _misses(f"{c.name}/{n_train} training", n_train, result)
        print(f"{lead}{'meanpool':<{width}}{result['meanpool']:>7.3f}")
    print(
        f"\ngoals (the first variant), at patch accuracy >= {GOAL_ACCURACY} and certain: SPAN AUC "
        f">= {GOAL_SPAN['large']} on every seed at >= 200 training slides, >= "
        f"{GOAL_SPAN['small']} below; ABMIL and mean pooling <= {GOAL_IID}; paired t-test p < "
        f"{GOAL_P}"
    )
    print("all goals met" if not misses else "missed: " + "; ".join(misses))
    return 0 if not misses else 1


def _misses(where: str, n_train: int, result: dict) -> list[str]:
    """The goals one cohort's result misses, each a short line naming it."""
    misses = []
    span_min = min(result["auc"]["span"])
    if span_min < GOAL_SPAN["large" if n_train >= 200 else "small"]:
        misses.append(f"{where}: SPAN min AUC {span_min:.3f}")
    worst_iid = max(max(result["auc"]["abmil"]), result["meanpool"])
    if worst_iid > GOAL_IID:
        misses.append(f"{where}: i.i.d. baseline AUC {worst_iid:.3f}")
    if result["t_p"] is None or not result["t_p"] < GOAL_P:
        misses.append(f"{where}: t-test p {result['t_test']}")
    return misses
