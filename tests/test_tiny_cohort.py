"""The workflow end to end on a tiny cohort, run once for the whole module (make test
distributes tests by file, so one worker runs them all): outputs by content, sweeps,
rerun semantics after config edits, and the HTML report."""

from __future__ import annotations

import base64
import copy
import csv
import json
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from span import outputs as files
from span.features.feature_file import read_feature_file
from span.inference.exports import read_scores_h5
from span.inference.heatmap import thumbnail
from span.slides.tiff_writer import write_pyramidal_tiff
from span.synthetic.tissue import render_tissue
from tests.workflow_helpers import TINY, base_config, planned_jobs, snakemake, write_sheet


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny cohort run once end to end: 8 labelled slides with an explicit split and an
    unlabelled one, 2 seeds, 2 epochs; experiments `tiny` (SPAN, ABMIL) and `sweep` (SPAN at
    window sides 2 and 4). Returns (workdir, config, sheet rows)."""
    tmp_path = tmp_path_factory.mktemp("tiny")
    rows = []
    splits = ["train", "train", "train", "train", "val", "val", "test", "test"]
    for i, split in enumerate(splits):
        image, *_ = render_tissue(600, 650, 0.5, tumour=bool(i % 2), seed=20 + i)
        write_pyramidal_tiff(tmp_path / f"s{i}.tiff", image, 0.5, downsamples=(1, 4, 16))
        rows.append((f"s{i}", f"s{i}.tiff", "tumor" if i % 2 else "normal", split))
    image, *_ = render_tissue(600, 650, 0.5, tumour=True, seed=99)
    write_pyramidal_tiff(tmp_path / "unlabelled.tiff", image, 0.5, downsamples=(1, 4, 16))
    rows.append(("unlabelled", "unlabelled.tiff", "", ""))
    sheet = write_sheet(tmp_path / "s.tsv", rows, header=("slide_id", "path", "label", "split"))
    config = base_config(sheet)
    tiny_span = {"embed_dim": 32, "heads": 4}
    config.update(
        seeds=[0, 1],
        training={"epochs": 2, "patience": 2, "threads": 1, "standardize": True},
        experiments={
            "tiny": [
                {"model": "span", "hparams": tiny_span},
                {"model": "abmil", "hparams": {"hidden": 64, "attention_hidden": 16}},
            ],
            "sweep": [
                {
                    "model": "span",
                    "name": f"w{side}",
                    "label": f"{side}x{side}",
                    "hparams": {**tiny_span, "window_side": side},
                }
                for side in (2, 4)
            ],
        },
        predict={"heatmaps": ["span", "abmil"], "heatmap_max_side": 300},
    )
    res = snakemake(tmp_path, "--cores", "2", config=config)
    assert res.returncode == 0, res.stdout[-3000:]
    (tmp_path / "console.txt").write_text(res.stdout)
    return tmp_path, config, rows


def test_the_console_shows_progress_not_every_detail(tiny_run):
    """The workflow profile keeps the console short: no job's reason to run (on a cohort,
    lists of thousands of files), no shell command, no INFO line of a job (its log has
    them); the progress and the warnings stay."""
    tmp_path, *_ = tiny_run
    console = (tmp_path / "console.txt").read_text()
    assert "reason:" not in console and "Shell command" not in console
    assert " INFO " not in console
    assert "steps (100%) done" in console and "ENCODER WEIGHTS ARE RANDOM" in console
    log = (tmp_path / TINY.log("patch", "labelled-1")).read_text()
    assert " INFO span.batches: s0: made" in log


def test_end_to_end_tiny_cohort(tiny_run):
    """Raw slides -> patches -> features -> splits -> 2 models x 2 seeds -> report, predictions
    and heatmaps, checked by content."""
    tmp_path, _, rows = tiny_run
    out = tmp_path / TINY.experiment("tiny")

    with (out / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["variant"] for r in table] == ["span", "abmil"]
    for row in table:
        for key in ("p_ttest_accuracy", "p_ttest_auc", "p_delong"):
            if row["is_reference"] == "True":
                continue
            value = row[key]
            assert (value == "n/a" and key in row["notes"]) or 0.0 <= float(value) <= 1.0
    assert (out / "roc.png").stat().st_size > 0
    run = json.loads((out / "span" / "seed1" / "metrics.json").read_text())
    assert run["training"]["standardize"] is True and run["seed"] == 1
    report = (out / "report.md").read_text()
    assert report.startswith("> **WARNING") and "| Method | Accuracy" in report
    assert "sweep.png" not in report

    for variant in ("span", "abmil"):
        with (out / variant / "predictions.csv").open() as f:
            predictions = list(csv.DictReader(f))
        means = {r["slide_id"]: r for r in predictions if r["run"] == "mean"}
        assert set(means) == {r[0] for r in rows}
        for r in predictions:
            assert abs(float(r["prob_normal"]) + float(r["prob_tumor"]) - 1) < 1e-4
        for slide_id, path, *_ in rows:
            folder = out / variant / "heatmaps"
            heatmap = plt.imread(folder / f"{slide_id}.png")
            assert heatmap.shape[0] > thumbnail(tmp_path / path, 300)[0].shape[0]  # + title, tiles
            scores = read_scores_h5(folder / f"{slide_id}.h5")
            fs = read_feature_file(tmp_path / TINY.features(slide_id))
            np.testing.assert_array_equal(scores.coords, fs.coords)
            np.testing.assert_array_equal(scores.grid, fs.grid)
            assert np.isfinite(scores.scores).all() and len(scores.scores) == len(fs)
            probs = [float(means[slide_id][f"prob_{c}"]) for c in ("normal", "tumor")]
            assert scores.attrs["predicted"] == ("normal", "tumor")[int(np.argmax(probs))]
            geojson = json.loads((folder / f"{slide_id}.geojson").read_text())
            assert len(geojson["features"]) == len(fs)


def test_sweep_experiment_gets_its_plot_and_labels(tiny_run):
    tmp_path, *_ = tiny_run
    out = tmp_path / TINY.experiment("sweep")
    with (out / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [(r["variant"], r["method"]) for r in table] == [("w2", "2x2"), ("w4", "4x4")]
    assert plt.imread(out / "sweep.png").shape[0] > 100
    report = (out / "report.md").read_text()
    assert "![Sweep over window_side](sweep.png)" in report and "| 4x4 |" in report
    log = (tmp_path / TINY.log("sweep_plot", "sweep")).read_text()
    assert "window_side = 2: accuracy" in log and "window_side = 4: accuracy" in log


def test_config_edits_rerun_only_the_affected_stages(tiny_run):
    """Rerun semantics through params: what a stage reads from config triggers it and its
    downstream jobs only."""
    tmp_path, config, _ = tiny_run
    assert planned_jobs(snakemake(tmp_path, "-n", config=config)) == {}

    edited = {**config, "training": {**config["training"], "lr": 3e-4}}
    counts = planned_jobs(snakemake(tmp_path, "-n", config=edited))
    assert set(counts) == {"train", "evaluate", "predict", "sweep_plot", "all"}, counts
    assert counts["train"] == 8 and counts["evaluate"] == 2 and counts["predict"] == 4

    # A variant's hyperparameter retrains that variant only (2 seeds).
    edited = copy.deepcopy(config)
    edited["experiments"]["tiny"][1]["hparams"]["hidden"] = 32
    counts = planned_jobs(snakemake(tmp_path, "-n", config=edited))
    assert counts == {"train": 2, "evaluate": 1, "predict": 1, "all": 1}, counts

    edited = {**config, "predict": {**config["predict"], "heatmap_max_side": 200}}
    assert set(planned_jobs(snakemake(tmp_path, "-n", config=edited))) == {"predict", "all"}

    edited = {**config, "patching": {"min_tissue_fraction": 0.5}}
    counts = planned_jobs(snakemake(tmp_path, "-n", config=edited))
    # One batch job per stage for the 8 labelled slides, one for the unlabelled; 9 links each.
    assert counts["patch"] == counts["extract"] == 2 and counts["qc_summary"] == 1
    assert counts["link_patches"] == counts["link_features"] == 9
    assert counts["train"] == 8 and counts["evaluate"] == 2 and counts["sweep_plot"] == 1
    assert counts["split"] == 1  # re-checks which slides are excluded

    # The split protocol retrains everything (the sheet's split column keeps the same split).
    edited = {**config, "splits": {"seed": 7}}
    counts = planned_jobs(snakemake(tmp_path, "-n", config=edited))
    assert counts == {
        "split": 1,
        "train": 8,
        "evaluate": 2,
        "predict": 4,
        "sweep_plot": 1,
        "all": 1,
    }, counts

    # The per_seed protocol splits once per training seed and retrains everything; under it,
    # the sheet's split column is pooled, so editing it would re-split nothing.
    edited = {**config, "splits": {"protocol": "per_seed"}}
    counts = planned_jobs(snakemake(tmp_path, "-n", config=edited))
    assert counts == {
        "split_per_seed": 2,
        "train": 8,
        "evaluate": 2,
        "predict": 4,
        "sweep_plot": 1,
        "all": 1,
    }, counts

    # Options that change speed, never results, re-run nothing.
    edited = {
        **config,
        "features": {
            **config["features"],
            **{"device": "cpu", "batch_size": 7, "num_workers": 1, "flush_every": 64},
            "threads": 2,
        },
        "training": {**config["training"], "device": "cpu", "threads": 2},
    }
    assert planned_jobs(snakemake(tmp_path, "-n", config=edited)) == {}


def embedded_file(html: str, path: Path) -> bytes:
    """A file embedded in a `snakemake --report` HTML (a base64 data URI under its path)."""
    start = html.index(f'"{path}": {{')
    uri = html.index('"data_uri": "', start) + len('"data_uri": "')
    return base64.b64decode(html[uri : html.index('"', uri)].split("base64,", 1)[1])


def test_html_report_holds_tables_and_figures(tiny_run):
    tmp_path, config, _ = tiny_run
    res = snakemake(tmp_path, "--report", "report.html", config=config)
    assert res.returncode == 0, res.stdout[-3000:]
    html = (tmp_path / "report.html").read_text()
    results = Path("results", "tiny")
    for name in ("tiny/results.csv", "tiny/report.md", "sweep/results.csv"):
        assert embedded_file(html, results / name) == (tmp_path / results / name).read_bytes()
    expected = [
        "tiny/roc.png",
        "sweep/roc.png",
        "sweep/sweep.png",
        "qc/s0.png",
        "tiny/span/heatmaps/s0.png",
        "tiny/abmil/heatmaps/unlabelled.png",
    ]
    for name in expected:
        assert embedded_file(html, results / name)[:4] == b"\x89PNG", name


def test_a_rerun_replaces_the_heatmap_folder_whole(tiny_run):
    """Heatmap folders are update() outputs too: a re-run leaves exactly this run's heatmaps,
    and a backup left by a killed run does not stop it."""
    tmp_path, config, _ = tiny_run
    heatmaps = tmp_path / TINY.variant("tiny", "span", files.HEATMAPS_DIR)
    (heatmaps / "gone.png").write_bytes(b"\x89PNG from a slide no longer in the sheet")
    stale = tmp_path / ".snakemake" / "backups" / heatmaps.relative_to(tmp_path)
    stale.mkdir(parents=True)
    (heatmaps / "gone.h5").write_bytes(b"scores of a slide no longer in the sheet")
    before = (heatmaps / "s0.png").read_bytes()
    edited = {**config, "predict": {**config["predict"], "heatmap_max_side": 250}}
    res = snakemake(tmp_path, "--cores", "2", config=edited)
    assert res.returncode == 0, res.stdout[-3000:]
    slides = [f"s{i}" for i in range(8)] + ["unlabelled"]
    expected = sorted(f"{s}{suffix}" for s in slides for suffix in (".png", ".geojson", ".h5"))
    assert sorted(p.name for p in heatmaps.iterdir() if not p.name.startswith(".")) == expected
    assert (heatmaps / "s0.png").read_bytes() != before  # drawn again, at 250 px


def test_a_failed_rerun_keeps_the_finished_results(tiny_run):
    """A re-run whose job fails puts the previous outputs back (update() flags) and the next
    run still redoes it; the end of the run lists the failed job with its one line. (The job
    fails on a training slide's features file damaged behind Snakemake's back: a bad variant
    no longer gets that far, `span check` stops it at start-up.)"""
    tmp_path, config, _ = tiny_run
    target = TINY.run("tiny", "abmil", 0)
    run = tmp_path / target
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    edited = copy.deepcopy(config)
    edited["experiments"]["tiny"][1]["hparams"]["hidden"] = 48
    features = tmp_path / TINY.features("s0")  # a training slide
    kept, stat = features.read_bytes(), features.stat()
    features.unlink()  # a new file: the store's hard link keeps the original
    features.write_bytes(b"not an HDF5 file")
    os.utime(features, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # unseen by Snakemake
    try:
        res = snakemake(tmp_path, "--cores", "1", f"{target}/metrics.json", config=edited)
    finally:
        features.write_bytes(kept)
        os.utime(features, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert res.returncode != 0
    assert f"Restored previous version of {target}/{files.METRICS_JSON}" in res.stdout
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    failed = res.stdout[res.stdout.index("1 job(s) failed:") :].splitlines()
    assert failed[1].startswith("  train tiny/abmil/seed0: ") and "s0.h5" in failed[1]
    # Snakemake records the failed job's params as done; the kept result is dated 1970 so the
    # next run still redoes the job instead of taking the old result for the new config.
    assert "earlier result(s) kept in place of the failed jobs'" in res.stdout
    assert (run / "metrics.json").stat().st_mtime == 1
    rerun = snakemake(tmp_path, "-n", f"{target}/metrics.json", config=edited)
    assert planned_jobs(rerun).get("train") == 1


def test_a_bad_variant_stops_the_run_before_any_job(tiny_run):
    """A hyperparameter's name or value, or a training override, that the variant's model or
    `span train` refuses is one line at start-up, naming the variant."""
    tmp_path, config, _ = tiny_run
    for hparams, training, message in [
        ({"no_such_option": 1}, {}, "experiments.tiny.abmil.hparams: abmil has no hyperparameter"),
        ({"attention_activation": "spam"}, {}, "abmil.hparams: attention activation must be"),
        ({"hidden": -3}, {}, "experiments.tiny.abmil.hparams: Trying to create tensor"),
        ({}, {"epochs": 0}, "experiments.tiny.abmil.training.epochs: 0 is not >= 1"),
        ({}, {"lr": "fast"}, "experiments.tiny.abmil.training.lr: 'fast' is not float"),
    ]:
        broken = copy.deepcopy(config)
        broken["experiments"]["tiny"][1]["hparams"] |= hparams
        broken["experiments"]["tiny"][1]["training"] = training
        res = snakemake(tmp_path, "-n", config=broken)
        assert res.returncode != 0
        line = next(x for x in res.stdout.splitlines() if "invalid config" in x)
        assert message in line, line


def test_per_seed_splits_train_and_test_each_seed_on_its_own_split(tiny_run):
    """Run last (it retrains ABMIL on other splits): under splits.protocol per_seed, seed k's
    run reads splits/seed<k>.tsv, drawn with the sheet's split column pooled. The authors'
    70/15/15 of 8 patients tests one slide, so one class: the split job stops, nothing trains."""
    from span.data.splits import read_splits

    tmp_path, config, _ = tiny_run
    edited = {**config, "splits": {"protocol": "per_seed"}}
    targets = [TINY.run("tiny", "abmil", seed, files.TEST_PREDICTIONS_CSV) for seed in (0, 1)]
    res = snakemake(tmp_path, "--cores", "2", *targets, config=edited)
    assert res.returncode != 0 and "rule train" not in res.stdout
    log = (tmp_path / TINY.log("split_per_seed", "seed0")).read_text()
    assert "the test set has no " in log and "raise splits.test_fraction" in log

    edited["splits"] |= {"test_fraction": 0.25, "val_fraction": 0.34}  # 2 and 2 of 8 patients
    res = snakemake(tmp_path, "--cores", "2", *targets, config=edited)
    assert res.returncode == 0, res.stdout[-3000:]
    for seed in (0, 1):
        rows = read_splits(tmp_path / TINY.seed_splits(seed))
        sets = {name: {r.slide_id for r in rows if r.split == name} for name in ("train", "test")}
        assert (len(sets["train"]), len(sets["test"])) == (4, 2)
        with (tmp_path / TINY.run("tiny", "abmil", seed, files.TEST_PREDICTIONS_CSV)).open() as f:
            assert {r["slide_id"] for r in csv.DictReader(f)} == sets["test"]
        run = json.loads(
            (tmp_path / TINY.run("tiny", "abmil", seed, files.METRICS_JSON)).read_text()
        )
        assert run["slides"] == {"train": 4, "val": 2, "test": 2}
    log = (tmp_path / TINY.log("split_per_seed", "seed1")).read_text()
    assert "the sheet's split column is ignored" in log
