"""`span evaluate`: an experiment's results tables, figures and report.md.

Input, per variant and seed, a folder `<exp>/<variant>/seed<k>/` with the run files of
`span.run_files`. Output, in `out_dir`, every file written atomically: results.csv
(one row per variant) and results_per_seed.csv (`span.evaluation.results_files`), results.md
(the paper's Table 1, or Table 2 when C > 2), roc.png and report.md. The statistics are those
of `span.evaluation.summary`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from span.atomic import write_text_atomic
from span.data.qc_summary import read_exclusions
from span.data.splits import shares_test_set
from span.evaluation.plots import plot_roc
from span.evaluation.results_files import write_results
from span.evaluation.seed_runs import VariantResult, load_results
from span.evaluation.summary import (
    BOOTSTRAP_SEED,
    PER_SEED_TEST_SETS,
    per_seed_rows,
    summarize,
    unique_values,
)
from span.evaluation.tables import (
    Footnotes,
    cell,
    per_seed_table,
    results_table,
    secondary_table,
)
from span.outputs import (
    REPORT_MD,
    RESULTS_CSV,
    RESULTS_MD,
    RESULTS_PER_SEED_CSV,
    ROC_PNG,
    SWEEP_PNG,
)

_RANDOM_WEIGHTS_WARNING = (
    "> **WARNING: the features come from a randomly initialised encoder (encoder weights "
    "= `random`). These results test the pipeline only and mean nothing clinically.**\n"
)


def _recorded_pairs(infos: Sequence[dict], key: str, width: int) -> list[tuple]:
    """The runs' `key` entries (lists of `width` items, the slide id first), one per slide."""
    by_slide: dict[str, tuple] = {}
    for info in infos:
        for entry in info.get(key) or []:
            if isinstance(entry, list | tuple) and len(entry) == width:
                by_slide.setdefault(str(entry[0]), tuple(entry))
    return list(by_slide.values())


def _unlabelled_exclusions(qc_summary: Path | None, labelled: set[str]) -> list[tuple[str, str]]:
    """The QC summary's excluded slides that no run records: the unlabelled ones."""
    if qc_summary is None:
        return []
    return [
        (e.slide_id, e.reason) for e in read_exclusions(qc_summary) if e.slide_id not in labelled
    ]


def _excluded_section(infos: Sequence[dict], qc_summary: Path | None) -> str:
    """Every excluded slide with its reason: the labelled ones the runs record, then the
    unlabelled ones of the QC summary."""
    labelled = _recorded_pairs(infos, "excluded", 2)
    unlabelled = _unlabelled_exclusions(qc_summary, {s for s, _ in labelled})
    if not labelled and not unlabelled:
        return "## Excluded slides\n\nNone.\n"
    counts = f"{len(labelled)} labelled (left out of training, evaluation and predictions)"
    if qc_summary is not None:
        counts += f", {len(unlabelled)} unlabelled (not predicted)"
    rows = "\n".join(f"| {cell(s)} | {cell(r)} |" for s, r in labelled + unlabelled)
    return f"## Excluded slides\n\n{counts}.\n\n| Slide | Reason |\n|---|---|\n{rows}\n"


def _slides_sections(infos: Sequence[dict], qc_summary: Path | None) -> list[str]:
    """The excluded slides and, when any, the slides that lost unreadable tiles."""
    parts = [_excluded_section(infos, qc_summary)]
    damaged = _recorded_pairs(infos, "bad_tiles", 3)
    if damaged:
        rows_md = "\n".join(
            f"| {cell(slide)} | {bad} | {float(share):.1%} |" for slide, bad, share in damaged
        )
        parts.append(
            "## Slides with unreadable tiles\n\nThese tiles could not be read and were left "
            "out of the slide's bag; the slide itself is kept (below "
            "features.max_bad_tile_share).\n\n| Slide | Tiles left out | Share of the slide |\n"
            f"|---|---|---|\n{rows_md}\n"
        )
    return parts


def _split_warnings(infos: Sequence[dict]) -> list[str]:
    """What the runs' splits leave undefined (a class missing from validation), as recorded."""
    return [str(w) for info in infos for w in info.get("split_warnings") or []]


def _splits_lines(protocol: str, classes: Sequence[str], result: VariantResult) -> list[str]:
    """The report's lines on the classes, how the splits were made and the test slides."""
    if shares_test_set(protocol):
        return [
            f"- Classes: {', '.join(classes)}; {len(result.runs[0].y)} test slides",
            f"- Splits: `{protocol}`, one split for every seed (the same test slides)",
        ]
    sizes = sorted({len(r.y) for r in result.runs})
    return [
        f"- Classes: {', '.join(classes)}; {sizes[0]}-{sizes[-1]} test slides per seed, "
        f"{result.test_slides} distinct",
        f"- Splits: `{protocol}`, the sheet's split pooled and a new split drawn for every "
        "seed, so that seeds measure data variation too",
    ]


def _seed_averaged_intro(shared_test: bool) -> str:
    """What the seed-averaged section holds, or why its averages and DeLong are n/a."""
    if shared_test:
        return (
            "Probabilities averaged over seeds per slide; percentile bootstrap CIs over slides; "
            "DeLong's test against the reference on the same slides. Balanced accuracy and "
            "macro F1 are mean ± std over seeds."
        )
    return (
        f"Not computed: {PER_SEED_TEST_SETS}; the appendix has the per-seed DeLong p-values. "
        "The t-test on AUC, balanced accuracy and macro F1 are over seeds as usual. The ROC "
        "curves pool every seed's test predictions."
    )


def write_report(
    out_dir: str | Path,
    experiment: str,
    variants: Mapping[str, Sequence[str | Path]],
    reference: str,
    classes: Sequence[str],
    cohort: str = "",
    n_bootstrap: int = 1000,
    labels: Mapping[str, str] | None = None,
    sweep: str | None = None,
    protocol: str = "fixed",
    qc_summary: str | Path | None = None,
) -> dict[str, Path]:
    """Write results.csv, results_per_seed.csv, results.md, roc.png and report.md; return paths.

    `labels` maps variants to display names; `sweep` names the hyperparameter of a sweep
    experiment, whose plot (sweep.png, written by `span sweep-plot`) the report then shows;
    `protocol` is splits.protocol (per_seed: every seed has its own test set).
    Device, encoder weights, split warnings, excluded slides and those that lost unreadable
    tiles are the ones recorded in the runs' metrics.json; `qc_summary` (qc/summary.tsv) adds
    the excluded unlabelled slides.
    """
    out_dir = Path(out_dir)
    qc_summary = None if qc_summary is None else Path(qc_summary)
    classes = list(classes)
    shared_test = shares_test_set(protocol)
    results = load_results(variants, reference, classes, labels, shared_test)
    reference_name = results[reference].display
    rows = summarize(results, reference, classes, n_bootstrap=n_bootstrap)
    seed_rows = per_seed_rows(results, reference, classes)
    infos = [r.info for res in results.values() for r in res.runs]
    run_weights = unique_values(i["encoder_weights"] for i in infos)

    paths = {
        "results_csv": out_dir / RESULTS_CSV,
        "results_per_seed_csv": out_dir / RESULTS_PER_SEED_CSV,
        "results_md": out_dir / RESULTS_MD,
        "roc_png": out_dir / ROC_PNG,
        "report_md": out_dir / REPORT_MD,
    }
    write_results(paths["results_csv"], rows)
    write_results(paths["results_per_seed_csv"], seed_rows)

    table_no = "Table 1" if len(classes) == 2 else "Table 2"
    caption = (
        f"{table_no} layout: comparison of methods on {cohort or experiment} with statistical "
        f"significance (p-values) compared to {reference_name}."
    )
    notes = Footnotes()
    table = results_table(rows, classes, notes)
    write_text_atomic(paths["results_md"], f"{caption}\n\n{table}\n\n{notes.render()}\n")

    plot_roc(paths["roc_png"], results, classes)

    notes = Footnotes()
    table = results_table(rows, classes, notes)  # again: footnote numbers restart per file
    parts = [_RANDOM_WEIGHTS_WARNING] if "random" in run_weights else []
    parts.append(f"# Results: {experiment}\n")
    meta = [
        f"- Cohort: {cohort or 'n/a'}",
        f"- Experiment: {experiment}",
        *_splits_lines(protocol, classes, results[reference]),
        f"- Device: {' / '.join(unique_values(i['device'] for i in infos))}",
        f"- Encoder weights: {' / '.join(run_weights)}",
        f"- Reference (p-values): {reference_name}",
        f"- Bootstrap: {n_bootstrap} resamples of the slides, seed {BOOTSTRAP_SEED}",
    ]
    if len(run_weights) > 1:
        meta.append(f"- **Runs used different encoder weights: {', '.join(run_weights)}**")
    parts.append("\n".join(meta) + "\n")
    parts += [f"> **WARNING: {w}**\n" for w in unique_values(_split_warnings(infos))]
    parts.append(f"## Main results\n\n{caption}\n\n{table}\n")
    parts.append(
        f"## Seed-averaged predictions\n\n{_seed_averaged_intro(shared_test)}\n\n"
        f"{secondary_table(rows, classes, notes)}\n"
    )
    parts.append("## ROC curves\n\n![ROC curves](roc.png)\n")
    if sweep:
        parts.append(
            f"## Sweep over {sweep}\n\nAccuracy and peak memory against {sweep} "
            f"(the paper's Figure 4):\n\n![Sweep over {sweep}]({SWEEP_PNG})\n"
        )
    parts += _slides_sections(infos, qc_summary)
    parts.append(
        "## Appendix: per-seed results\n\n<details>\n<summary>Per-seed numbers</summary>\n\n"
        f"{per_seed_table(seed_rows, classes)}\n\n</details>\n"
    )
    parts.append(notes.render() + "\n")
    write_text_atomic(paths["report_md"], "\n".join(parts))
    return paths
