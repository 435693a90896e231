"""Localisation benchmark: do a model's patch scores point at the patches that decide a slide?

Per slide, the AUC of the patch scores against the generator's truth (the demo's tumour
patches, `<slide>.truth.png` beside each demo slide; a spatial cohort's rare-type patches, its
`layouts.npz`), for every variant and seed of a finished run, with each score method
(`span.inference.attribution`): the model's own attention, gradient x input and integrated
gradients, toward the class the run predicts. Prints the median per-slide AUC per seed, on the
test slides and on all slides of each class, and checks the goals: SPAN's heatmap scores
(`heatmap_scores: auto`) reach a median of 0.85 on the clumped test slides on every seed, and
lie ahead of every baseline's attention on every seed.

    python benchmarks/bench_localisation.py    # the demo's main experiment (make demo first)
    python benchmarks/bench_localisation.py --spatial results/spatial_benchmark/<cohort>
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
GOAL = 0.85


def score_run(args: tuple) -> tuple[str, str, dict]:
    """One run's per-slide AUCs per method (one thread)."""
    variant, run, truths, n_classes, methods = args
    import torch

    from span.inference.localisation import run_localisation

    torch.set_num_threads(1)
    return variant, run.name, run_localisation(run, truths, n_classes, methods, "cpu")


def runs_of(experiment: Path) -> dict[str, list[Path]]:
    """Variant -> its finished seed runs (folders with a checkpoint), in seed order."""
    out = {}
    for variant in sorted(p for p in experiment.iterdir() if p.is_dir()):
        seeds = sorted(variant.glob("seed*/checkpoint.pt"), key=lambda p: int(p.parent.name[4:]))
        if seeds:
            out[variant.name] = [p.parent for p in seeds]
    return out


def test_slides(splits: Path, seed: str) -> set[str]:
    """The test slides of a seed: its own split (per_seed protocol) or the one split."""
    from span.data.splits import read_splits

    own = splits.parent / "splits" / f"{seed}.tsv"
    return {r.slide_id for r in read_splits(own if own.exists() else splits) if r.split == "test"}


def median(values: list[float | None]) -> float:
    kept = [v for v in values if v is not None]
    return float(np.median(kept)) if kept else float("nan")


def report(
    results: dict, truths: list, tests: dict, title: str, models: dict, ours: str
) -> list[str]:
    """Print the tables; return the goals missed by variant `ours` against the variants of
    other models (`models`: variant -> model)."""
    from span.inference.attribution import resolve_method

    labels = sorted({t.label for t in truths})
    by_label = {c: {t.slide_id for t in truths if t.label == c} for c in labels}
    seeds = sorted({seed for (_, seed) in results}, key=lambda s: int(s[4:]))
    print(title)
    blocks = [(f"{c}, test", c, True) for c in labels] + [(f"{c}, all", c, False) for c in labels]
    medians = {}
    for name, label, test_only in blocks:
        print(f"\n{name} slides: median per-slide AUC, per seed")
        print(f"{'variant':<16}{'scores':<22}" + "".join(f"{s:>8}" for s in seeds) + "   mean")
        for variant in sorted({v for (v, _) in results}):
            for method in results[(variant, seeds[0])]:
                row = []
                for seed in seeds:
                    keep = by_label[label] & (tests[seed] if test_only else by_label[label])
                    aucs = results[(variant, seed)][method]
                    row.append(median([aucs[s] for s in keep]))
                medians[(name, variant, method)] = row
                cells = "".join(f"{v:8.3f}" for v in row)
                print(f"{variant:<16}{method:<22}{cells}   {np.nanmean(row):.3f}")
    misses = []
    target = "clumped, test" if "clumped" in labels else f"{labels[-1]}, test"
    method = resolve_method("auto", models.get(ours, ""))
    needed = [(target, v, "attention") for v in models] + [(target, ours, method)]
    if not all(key in medians for key in needed):
        print(f"\ngoals not checked: they need {ours} with {method} and every model's attention")
        return misses
    scores = medians[(target, ours, method)]
    if min(scores) < GOAL:
        misses.append(f"{ours} ({method}): median AUC {min(scores):.3f} < {GOAL} on a seed")
    for other, model in models.items():
        theirs = medians[(target, other, "attention")]
        if model != models[ours] and any(a <= b for a, b in zip(scores, theirs, strict=True)):
            misses.append(f"{ours} not ahead of {other}'s attention on every seed")
    print(f"\ngoals ({target} slides): {ours}'s heatmap scores ({method}) median AUC >= {GOAL}")
    print("on every seed, ahead of every other model's attention on every seed")
    print("\n".join(f"missed: {m}" for m in misses) or "all goals met")
    return misses


def main() -> None:
    from span.data.samplesheet import load_sample_sheet
    from span.inference.attribution import METHODS
    from span.inference.localisation import demo_truths, spatial_truths
    from span.outputs import METRICS_JSON
    from span.run_files import read_run_metrics

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO / "results" / "demo")
    parser.add_argument("--experiment", default="main")
    parser.add_argument("--features", type=Path, help="the demo's features folder, if several")
    parser.add_argument("--spatial", type=Path, help="a spatial benchmark cohort folder instead")
    parser.add_argument("--variants", nargs="+", help="only these variants (default: all)")
    parser.add_argument("--goal-variant", default="span", help="the variant the goals are for")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.spatial:
        folder = args.spatial
        spec = json.loads((folder / "spec.json").read_text())
        from span.synthetic.layouts import TASKS

        classes = list(TASKS[spec["task"]].classes)
        samples = load_sample_sheet(folder / "samples.tsv", classes)
        truths = spatial_truths(folder, samples)
        runs, splits = runs_of(folder), folder / "splits.tsv"
        title = f"localisation on {folder.name}: rare-type patches against the others"
    else:
        config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
        classes = config["classes"]
        samples = load_sample_sheet(REPO / config["samples"], classes)
        folders = sorted((args.results / "features").glob("*/"))
        features = args.features or (folders[0] if len(folders) == 1 else None)
        if features is None:
            parser.error(f"{len(folders)} feature folders in {args.results}/features: --features")
        truths = demo_truths(samples, features, REPO / "resources" / "demo" / "slides")
        runs = runs_of(args.results / args.experiment)
        splits = args.results / "splits.tsv"
        title = f"localisation on the demo ({args.results}): tumour patches against tumour-free"
    if args.variants:
        runs = {v: r for v, r in runs.items() if v in args.variants}
    models = {v: read_run_metrics(r[0] / METRICS_JSON)["model"] for v, r in runs.items()}
    jobs = [(v, run, truths, len(classes), args.methods) for v, rs in runs.items() for run in rs]
    with ProcessPoolExecutor(args.workers) as pool:
        results = {(v, seed): aucs for v, seed, aucs in pool.map(score_run, jobs)}
    tests = {seed: test_slides(splits, seed) for (_, seed) in results}
    report(results, truths, tests, title, models, args.goal_variant)


if __name__ == "__main__":
    main()
