"""The results report on synthetic prediction directories (3 variants x 3 seeds)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from span.data.qc_summary import COLUMNS as QC_COLUMNS
from span.errors import SpanError
from span.evaluation.report import write_report
from span.evaluation.seed_runs import discover_variants

QUALITY = {"abmil": 1.0, "mhim": 0.6, "span": 1.6}


def _write_run(
    seed_dir: Path,
    variant: str,
    seed: int,
    y: np.ndarray,
    classes: list[str],
    weights: str,
    first: int = 0,
) -> None:
    """One seed's run files; its test slides are s<first>, s<first + 1>, ..."""
    rng = np.random.default_rng([list(QUALITY).index(variant), seed])
    logits = rng.normal(size=(len(y), len(classes))) + QUALITY[variant] * np.eye(len(classes))[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    seed_dir.mkdir(parents=True)
    df = pd.DataFrame(
        {"slide_id": [f"s{first + i:03d}" for i in range(len(y))], "label": np.array(classes)[y]}
    )
    for k, c in enumerate(classes):
        df[f"prob_{c}"] = probs[:, k]
    df.sample(frac=1, random_state=seed).to_csv(seed_dir / "test_predictions.csv", index=False)
    info = {
        "model": variant,
        "variant": variant,
        "seed": seed,
        "device": "cpu (test)",
        "parameters": 590_000 if variant != "span" else 2_370_000,
        "runtime_per_epoch_s": 3.0 + seed * 0.1,
        "peak_memory_mb": 1900.0 + seed,
        "peak_memory_kind": "peak RSS (CPU)",
        "encoder_weights": weights,
    }
    if variant == "span":
        info["excluded"] = [["s998", "no tissue patches"]]
        info["bad_tiles"] = [["s2", 3, 0.015]]
    if variant == "abmil":  # the same slide as another run records: listed once
        info["excluded"] = [["s998", "no tissue patches"]]
    if variant == "mhim":
        info["runtime_note"] = "includes the training of its teacher"
    (seed_dir / "metrics.json").write_text(json.dumps(info))


def _experiment(tmp: Path, classes: list[str], weights: str = "imagenet") -> dict[str, list[Path]]:
    y = np.random.default_rng(len(classes)).integers(0, len(classes), 60)
    for variant in QUALITY:
        for seed in range(3):
            _write_run(tmp / "exp" / variant / f"seed{seed}", variant, seed, y, classes, weights)
    return discover_variants(tmp / "exp")


@pytest.mark.parametrize("classes", [["normal", "tumor"], ["Negative", "Atypical", "Positive"]])
def test_report_binary_and_multiclass(tmp_path: Path, classes: list[str]) -> None:
    variants = _experiment(tmp_path, classes, weights="random")
    assert list(variants) == ["abmil", "mhim", "span"] and all(
        len(v) == 3 for v in variants.values()
    )
    out = write_report(
        tmp_path / "report",
        "demo-exp",
        variants,
        "span",
        classes,
        cohort="demo",
        n_bootstrap=100,
    )
    df = pd.read_csv(out["results_csv"])
    assert list(df["variant"]) == ["abmil", "mhim", "span"]
    assert (df["n_seeds"] == 3).all()
    p_cols = [c for c in df.columns if c.startswith("p_")]
    assert {"p_ttest_accuracy", "p_ttest_auc", "p_delong"} <= set(p_cols)
    for _, row in df.iterrows():
        for col in p_cols:
            if math.isnan(row[col]):
                assert col in row["notes"] or "p-values: reference" in row["notes"]
            else:
                assert 0 <= row[col] <= 1
        assert row["accuracy_ci_low"] <= row["seed_avg_accuracy"] <= row["accuracy_ci_high"]
    ref = df.set_index("variant").loc["span"]
    assert "reference" in ref["notes"]
    if len(classes) == 3:
        assert {f"auc_{c}_mean" for c in classes} <= set(df.columns)
        assert {f"p_delong_{c}" for c in classes} <= set(p_cols)
        assert df["notes"].str.contains("DeLong is defined for binary").sum() == 2
    else:
        assert df.loc[df["variant"] != "span", "p_delong"].between(0, 1).all()

    md = out["results_md"].read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Method"))
    for col in ["Accuracy", "p-value", "Runtime", "Parameter Size", "Memory Use"]:
        assert col in header
    aucs = ["AUC"] if len(classes) == 2 else [f"AUC ({c})" for c in classes]
    assert all(a in header for a in aucs)
    rows = [line for line in md.splitlines() if line.startswith("| ") and "Method" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["ABMIL", "MHIM", "SPAN"]
    assert rows[2].split("|")[len(aucs) + 3].strip() == "-"
    assert " ± " in rows[0] and "2.37M" in rows[2] and "includes the training of its teacher" in md

    report = out["report_md"].read_text()
    first = next(line for line in report.splitlines() if line.strip())
    assert "WARNING" in first and "randomly initialised encoder" in first
    assert "![ROC curves](roc.png)" in report and report.count("| s998 | no tissue patches |") == 1
    assert "## Slides with unreadable tiles" in report and "| s2 | 3 | 1.5% |" in report
    assert "<details>" in report and "Per-seed" in report
    image = imread(out["roc_png"])
    assert image.ndim == 3 and image.shape[0] > 100
    per_seed = pd.read_csv(out["results_per_seed_csv"])
    assert len(per_seed) == 9
    assert not list((tmp_path / "report").glob(".*tmp*"))


def _per_seed_experiment(tmp: Path, classes: list[str]) -> dict[str, list[Path]]:
    """Every seed tested on its own slides (splits.protocol per_seed): seed k on 40 + k slides
    from s<20k> on, the same for every variant."""
    for seed in range(3):
        y = np.random.default_rng([len(classes), seed]).integers(0, len(classes), 40 + seed)
        for variant in QUALITY:
            seed_dir = tmp / "exp" / variant / f"seed{seed}"
            _write_run(seed_dir, variant, seed, y, classes, "imagenet", first=20 * seed)
    return discover_variants(tmp / "exp")


@pytest.mark.parametrize("classes", [["normal", "tumor"], ["Negative", "Atypical", "Positive"]])
def test_per_seed_test_sets_pair_by_seed_and_give_delong_per_seed(tmp_path, classes) -> None:
    """Under per_seed the t-tests still pair seeds; seed averages, their CIs and DeLong on them
    are n/a with the reason, DeLong is per seed against the reference's same seed, and the
    report says which protocol made the splits."""
    variants = _per_seed_experiment(tmp_path, classes)
    with pytest.raises(SpanError, match="slides differ"):  # fixed: one shared test set
        write_report(tmp_path / "r", "e", variants, "span", classes, n_bootstrap=20)
    out = write_report(
        tmp_path / "r", "e", variants, "span", classes, n_bootstrap=20, protocol="per_seed"
    )
    df = pd.read_csv(out["results_csv"]).set_index("variant")
    delong = ["p_delong"] if len(classes) == 2 else [f"p_delong_{c}" for c in classes]
    for variant in ("abmil", "mhim"):
        row = df.loc[variant]
        assert 0 <= row["p_ttest_accuracy"] <= 1 and 0 <= row["p_ttest_auc"] <= 1
        assert all(math.isnan(row[c]) for c in ["seed_avg_auc", "auc_ci_low", *delong])
        assert "each seed has its own test set" in row["notes"]
        assert row["n_slides"] == 20 * 2 + 42  # s000..s081
    per_seed = pd.read_csv(out["results_per_seed_csv"])
    for _, row in per_seed.iterrows():
        for col in delong:
            assert math.isnan(row[col]) == (row["variant"] == "span"), (row["variant"], col)
            assert math.isnan(row[col]) or 0 <= row[col] <= 1
    report = out["report_md"].read_text()
    assert "- Splits: `per_seed`" in report and "40-42 test slides per seed, 82 distinct" in report
    assert "Not computed: each seed has its own test set" in report
    appendix = report[report.index("## Appendix") :]
    assert ("| DeLong p |" if len(classes) == 2 else f"| DeLong p ({classes[0]}) |") in appendix
    assert "DeLong's test of each seed's own test set in results_per_seed.csv" in report
    assert imread(out["roc_png"]).shape[0] > 100


def test_per_seed_runs_must_match_the_references_same_seed(tmp_path) -> None:
    variants = _per_seed_experiment(tmp_path, ["a", "b"])
    bad = variants["mhim"][2] / "test_predictions.csv"
    bad.write_text(bad.read_text().replace("s040,", "s999,"))
    with pytest.raises(SpanError, match="slides differ") as err:
        write_report(tmp_path / "r", "e", variants, "span", ["a", "b"], protocol="per_seed")
    assert "span/seed2" in str(err.value)


def test_the_fixed_report_names_its_protocol(tmp_path: Path) -> None:
    out = write_report(
        tmp_path / "r", "e", _experiment(tmp_path, ["a", "b"]), "span", ["a", "b"], n_bootstrap=20
    )
    report = out["report_md"].read_text()
    assert "- Classes: a, b; 60 test slides" in report
    assert "- Splits: `fixed`, one split for every seed" in report
    assert "DeLong's test against the reference on the same slides" in report
    assert "p_delong" not in pd.read_csv(out["results_per_seed_csv"]).columns


def test_no_warning_with_pretrained_weights(tmp_path: Path) -> None:
    variants = _experiment(tmp_path, ["a", "b"])
    out = write_report(tmp_path / "r", "e", variants, "span", ["a", "b"], n_bootstrap=50)
    report = out["report_md"].read_text()
    assert "WARNING" not in report
    assert "| s998 | no tissue patches |" in report  # from metrics.json


def _write_qc_summary(path: Path, excluded: dict[str, str]) -> Path:
    """A qc/summary.tsv whose slides are `excluded` (slide -> reason, '' = kept)."""
    rows = [
        {c: "" for c in QC_COLUMNS} | {"slide_id": s, "excluded": r} for s, r in excluded.items()
    ]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, QC_COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_every_excluded_slide_and_the_split_warnings_are_listed(tmp_path: Path) -> None:
    """Excluded labelled slides from the runs, unlabelled ones from the QC summary; what the
    runs' splits leave undefined, once per distinct warning."""
    variants = _experiment(tmp_path, ["a", "b"])
    warning = "validation has no 'b' slide (slides per class: ...): its AUC is undefined"
    for seed_dir in variants["abmil"] + variants["span"]:
        info = json.loads((seed_dir / "metrics.json").read_text())
        (seed_dir / "metrics.json").write_text(json.dumps({**info, "split_warnings": [warning]}))
    qc = _write_qc_summary(
        tmp_path / "summary.tsv",
        {"s000": "", "s998": "no tissue patches", "u1": "cannot be read (not a readable slide)"},
    )
    out = write_report(
        tmp_path / "r", "e", variants, "span", ["a", "b"], n_bootstrap=20, qc_summary=qc
    )
    report = out["report_md"].read_text()
    assert (
        "## Excluded slides\n\n1 labelled (left out of training, evaluation and predictions), "
        "1 unlabelled (not predicted).\n\n| Slide | Reason |\n|---|---|\n"
        "| s998 | no tissue patches |\n| u1 | cannot be read (not a readable slide) |\n"
    ) in report
    assert report.count(f"> **WARNING: {warning}**") == 1


def test_methods_are_named_by_the_config_label_else_the_registry(tmp_path: Path) -> None:
    variants = _experiment(tmp_path, ["a", "b"])
    variants["abmil_relu"] = variants.pop("abmil")  # a variant that is no model name
    out = write_report(
        tmp_path / "r", "e", variants, "span", ["a", "b"], n_bootstrap=20, labels={"mhim": "M"}
    )
    methods = dict(pd.read_csv(out["results_csv"])[["variant", "method"]].to_numpy())
    assert methods == {"abmil_relu": "abmil_relu", "mhim": "M", "span": "SPAN"}
    assert "| SPAN |" in out["results_md"].read_text()


def test_one_seed_and_undefined_auc(tmp_path: Path) -> None:
    classes = ["a", "b", "c"]
    variants = _experiment(tmp_path, classes)
    for d in [d for dirs in variants.values() for d in dirs]:  # drop class c from the test set
        f = d / "test_predictions.csv"
        df = pd.read_csv(f)
        df.loc[df["label"] == "c", "label"] = "a"
        df.to_csv(f, index=False)
    variants = {k: v[:1] for k, v in variants.items()}
    out = write_report(tmp_path / "r", "e", variants, "span", classes, n_bootstrap=50)
    df = pd.read_csv(out["results_csv"])
    assert df["accuracy_std"].isna().all() and df["p_ttest_accuracy"].isna().all()
    assert df["auc_c_mean"].isna().all() and df["auc_mean"].isna().all()
    assert df["notes"].str.contains("fewer than 2 paired seeds").sum() == 2
    assert df["notes"].str.contains("no positive slides").all()
    md = out["results_md"].read_text()
    assert "n/a[^" in md and "no positive slides" in md


def _broken(tmp_path: Path) -> tuple[dict[str, list[Path]], Path]:
    variants = _experiment(tmp_path, ["a", "b"])
    return variants, variants["mhim"][1]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "test_predictions.csv").unlink(), "prediction file not found"),
        (lambda d: (d / "metrics.json").write_text("{oops"), "not valid JSON"),
        (lambda d: (d / "metrics.json").write_text('{"model": "x"}'), "missing keys"),
        (
            lambda d: (d / "test_predictions.csv").write_text("slide_id,label,prob_a\ns1,a,1\n"),
            "missing columns ['prob_b']",
        ),
        (
            lambda d: (d / "test_predictions.csv").write_text(
                "slide_id,label,prob_a,prob_b\ns000,a,0.2,0.3\n"
            ),
            "sum to",
        ),
        (
            lambda d: (d / "test_predictions.csv").write_text(
                "slide_id,label,prob_a,prob_b\ns000,a,x,0.3\n"
            ),
            "is not a number",
        ),
        (
            lambda d: (d / "test_predictions.csv").write_text(
                "slide_id,label,prob_a,prob_b\ns000,a,0.5,0.5\n"
            ),
            "slides differ",
        ),
        (
            lambda d: (d / "test_predictions.csv").write_text(
                "slide_id,label,prob_a,prob_b\ns000,,0.5,0.5\n"
            ),
            "without a label",
        ),
    ],
)
def test_bad_inputs_are_one_line_errors(tmp_path: Path, damage, message: str) -> None:
    variants, bad = _broken(tmp_path)
    damage(bad)
    with pytest.raises(SpanError) as err:
        write_report(tmp_path / "r", "e", variants, "span", ["a", "b"], n_bootstrap=20)
    text = str(err.value)
    assert message in text and "\n" not in text and str(bad) in text
    assert not (tmp_path / "r" / "results.csv").exists()


def test_unknown_reference(tmp_path: Path) -> None:
    variants = _experiment(tmp_path, ["a", "b"])
    with pytest.raises(SpanError, match="reference variant 'nope'"):
        write_report(tmp_path / "r", "e", variants, "nope", ["a", "b"])


def test_sweep_plot_orders_by_value_and_names_missing_variants(tmp_path):
    from span.evaluation.plots import plot_sweep

    table = tmp_path / "results.csv"
    table.write_text(
        "variant,accuracy_mean,accuracy_std,peak_memory_mb,peak_memory_kind\n"
        "w6,0.8,0.05,900,peak RSS (CPU)\nw2,0.7,n/a,400,peak RSS (CPU)\n"
        "w4,0.75,0.02,n/a,peak RSS (CPU)\n"
    )
    rows = plot_sweep(table, "window_side", {"w6": 6, "w2": 2, "w4": 4}, tmp_path / "s.png")
    assert list(rows["variant"]) == ["w2", "w4", "w6"] and list(rows["value"]) == [2, 4, 6]
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SpanError, match=r"no row for variant\(s\) \['w8'\]"):
        plot_sweep(table, "window_side", {"w6": 6, "w8": 8}, tmp_path / "t.png")
    assert not (tmp_path / "t.png").exists()
