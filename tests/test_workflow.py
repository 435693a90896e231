"""The Snakemake workflow: start-up validation, planning, and failure isolation."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import torch
import yaml

from span.outputs import Layout
from span.slides.tiff_writer import write_pyramidal_tiff
from span.synthetic import DEMO_SLIDES
from span.synthetic.tissue import render_tissue
from tests.workflow_helpers import (
    REPO,
    SNAKEMAKE,
    TINY,
    base_config,
    planned_jobs,
    snakemake,
    write_sheet,
)

FEATURES = Path(TINY.features_dir)


def test_default_config_plans_demo_and_patching(tmp_path):
    """The demo's 64 slides, all labelled, in two batch jobs per stage and a link per slide."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    counts = planned_jobs(snakemake(tmp_path, "-n", "--quiet", "rules"))
    n = len((REPO / "config" / "demo_samples.tsv").read_text().splitlines()) - 1
    assert n == DEMO_SLIDES
    assert counts["demo_slides"] == counts["patch"] == counts["extract"] == 2
    assert counts["link_demo_slide"] == counts["link_patches"] == counts["link_features"] == n
    assert counts["qc_summary"] == 1


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"patching": {"patch_size": "big"}}, "patch_size"),
        ({"patching": {"preset": "fancy"}}, "preset"),
        ({"classes": ["tumor", "tumor"]}, "classes"),
        ({"cohort": "../escape"}, "cohort"),
        ({"patching": {"unknown_option": 1}}, "unknown_option"),
        ({"predict": {"heatmaps": ["spam"]}}, "predict.heatmaps: no experiment has a variant"),
        (
            {"training": {"device": "gpu"}},
            "training.device: 'gpu' is not valid; use auto (CUDA when present), cpu, cuda",
        ),
        ({"features": {"device": "cuda:x"}}, "features.device: 'cuda:x' is not valid"),
        pytest.param(
            {"training": {"device": "cuda:7"}},
            "training.device: cuda:7 asked but this machine has ",
            marks=pytest.mark.skipif(
                torch.cuda.device_count() > 7, reason="this machine has a cuda:7"
            ),
        ),
    ],
)
def test_bad_config_rejected_before_any_job(tmp_path, patch, message):
    sheet = write_sheet(tmp_path / "s.tsv", [("a", "a.svs", "normal")])
    (tmp_path / "a.svs").write_bytes(b"x")
    config = base_config(sheet)
    for key, value in patch.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    res = snakemake(tmp_path, "-n", config=config)
    assert res.returncode != 0
    assert "invalid config" in res.stdout and message in res.stdout
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    ("rows", "header", "message"),
    [
        ([("a", "x.svs", "normal"), ("a", "x.svs", "tumor")], None, "duplicate slide_id 'a'"),
        ([("../a", "x.svs", "normal")], None, "not safe as a file name"),
        ([("a", "x.svs", "benign")], None, "label 'benign' of 'a' is not one of"),
        ([("a", "x.svs")], ("slide_id", "path"), "missing column(s) label"),
        ([("a", "x.svs", "normal", "holdout")], ("slide_id", "path", "label", "split"), "split"),
    ],
)
def test_bad_sample_sheet_rejected_before_any_job(tmp_path, rows, header, message):
    (tmp_path / "x.svs").write_bytes(b"x")
    sheet = write_sheet(tmp_path / "s.tsv", rows, header or ("slide_id", "path", "label"))
    res = snakemake(tmp_path, "-n", config=base_config(sheet))
    assert res.returncode != 0
    assert message in res.stdout and str(sheet) in res.stdout


def test_missing_files_reported_all_at_once(tmp_path):
    (tmp_path / "here.svs").write_bytes(b"x")
    rows = [("a", "gone1.svs", "normal"), ("b", "here.svs", "tumor"), ("c", "gone2.svs", "")]
    sheet = write_sheet(tmp_path / "s.tsv", rows)
    res = snakemake(tmp_path, "-n", config=base_config(sheet))
    assert res.returncode != 0
    assert "2 input file(s)" in res.stdout
    assert "a: slide file gone1.svs" in res.stdout and "c: slide file gone2.svs" in res.stdout


def small_slide(path: Path, seed: int) -> Path:
    image, *_ = render_tissue(900, 1000, 0.5, tumour=bool(seed % 2), seed=seed)
    return write_pyramidal_tiff(path, image, 0.5, downsamples=(1, 4, 16))


SUMMARY = TINY.qc_summary


def test_unreadable_slide_is_excluded_and_a_new_slide_redoes_only_itself(tmp_path):
    small_slide(tmp_path / "good1.tiff", 1)
    small_slide(tmp_path / "good2.tiff", 2)
    (tmp_path / "bad.svs").write_bytes(b"II*\x00" + bytes(200))
    rows = [
        ("good1", "good1.tiff", "normal"),
        ("bad", "bad.svs", "tumor"),
        ("good2", "good2.tiff", "tumor"),
    ]
    sheet = write_sheet(tmp_path / "s.tsv", rows)
    res = snakemake(tmp_path, "--cores", "2", SUMMARY, config=base_config(sheet))
    assert res.returncode == 0, res.stdout[-3000:]
    out = tmp_path / "results" / "tiny"
    summary = {
        r.split("\t")[0]: r.split("\t") for r in (out / SUMMARY[13:]).read_text().splitlines()
    }
    assert summary["bad"][8].startswith("cannot be read (not a readable slide")
    assert summary["good1"][8] == summary["good2"][8] == ""
    with h5py.File(out / "patches" / "bad.h5") as f:
        assert f["coords"].shape == (0, 2) and "not a readable slide" in f.attrs["error"]
    with h5py.File(tmp_path / FEATURES / "bad.h5") as f:
        assert f["features"].shape[0] == 0
    listing = res.stdout[res.stdout.index("1 slide(s) excluded") :]
    assert "bad: excluded: cannot be read (not a readable slide" in listing
    assert "fix or replace the slide file" in listing
    # One batch job per stage made the three slides; a link job per slide put each in place.
    assert (out / "batches" / "patch" / "labelled-1.tsv").is_file()
    assert (out / "patches" / "good1.h5").stat().st_nlink == 2  # the store's file, linked

    # A new unlabelled slide: its own batch, only its patching and extraction, and the summary.
    small_slide(tmp_path / "new.tiff", 3)
    write_sheet(sheet, [*rows, ("new", "new.tiff", "")])
    config = base_config(sheet)
    counts = planned_jobs(snakemake(tmp_path, "-n", SUMMARY, config=config))
    assert counts == {
        "patch": 1,
        "link_patches": 1,
        "extract": 1,
        "link_features": 1,
        "qc_summary": 1,
    }, counts
    done = [tmp_path / FEATURES / "good1.h5", out / "patches" / "good1.h5"]
    stamps = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in done]
    res = snakemake(tmp_path, "--cores", "2", SUMMARY, config=config)
    assert res.returncode == 0, res.stdout[-3000:]
    assert [(p.stat().st_ino, p.stat().st_mtime_ns) for p in done] == stamps
    made = out / "features" / "resnet50-layer3" / "batches" / "extract" / "unlabelled-1.tsv"
    assert [r.split("\t")[:2] for r in made.read_text().splitlines()[1:]] == [["new", "made"]]

    # A new labelled slide joins the labelled batch: one run encodes it (only it) and links it.
    write_sheet(sheet, [*rows, ("new", "new.tiff", ""), ("new2", "new.tiff", "normal")])
    res = snakemake(tmp_path, "--cores", "2", SUMMARY, config=config)
    assert res.returncode == 0, res.stdout[-3000:]
    assert (tmp_path / FEATURES / "new2.h5").is_file()
    made = made.with_name("labelled-1.tsv")
    statuses = {r.split("\t")[0]: r.split("\t")[1] for r in made.read_text().splitlines()[1:]}
    assert statuses == {"bad": "reused", "good1": "reused", "good2": "reused", "new2": "made"}
    assert "new2" in (out / SUMMARY[13:]).read_text()

    # Fewer slides per job: the batch jobs re-form and reuse every stored slide.
    config["jobs"] = {"slides_per_job": 1}
    res = snakemake(tmp_path, "--cores", "2", SUMMARY, config=config)
    assert res.returncode == 0, res.stdout[-3000:]
    manifests = sorted((out / "batches" / "patch").glob("labelled-*.tsv"))
    assert len(manifests) == 4
    assert not any("\tmade\t" in m.read_text() for m in manifests)
    assert done[0].stat().st_ino == stamps[0][0]  # linked again, not encoded again


def test_strict_stops_at_an_unreadable_slide(tmp_path):
    small_slide(tmp_path / "good.tiff", 1)
    (tmp_path / "bad.svs").write_bytes(b"II*\x00" + bytes(200))
    sheet = write_sheet(
        tmp_path / "s.tsv", [("bad", "bad.svs", "tumor"), ("good", "good.tiff", "")]
    )
    config = {**base_config(sheet), "jobs": {"strict": True}}
    res = snakemake(tmp_path, "--cores", "2", SUMMARY, config=config)
    assert res.returncode != 0
    assert not (tmp_path / SUMMARY).exists()
    assert (tmp_path / FEATURES / "good.h5").is_file()  # its own batch (unlabelled) goes on
    # The end of the run lists the failed job, its batch and its one line.
    tail = res.stdout[res.stdout.index("1 job(s) failed:") :].splitlines()
    assert tail[1].startswith("  patch labelled-1: ") and "bad.svs: not a readable slide" in tail[1]
    assert tail[2] == f"    log: {TINY.log('patch', 'labelled-1')}"


def _corrupt_level0_tiles(slide: Path, tiles: list[int]) -> None:
    """Overwrite the middle of these level-0 JPEG tiles with random bytes (unreadable)."""
    with tifffile.TiffFile(slide) as tif:
        page = tif.pages[0]
        spans = [(page.dataoffsets[i], page.databytecounts[i]) for i in tiles]
    rng = np.random.default_rng(0)
    with slide.open("r+b") as f:
        for offset, count in spans:
            f.seek(offset + count // 3)
            f.write(rng.integers(0, 256, count // 2, dtype=np.uint8).tobytes())


@pytest.mark.slow
def test_bad_slides_are_excluded_everywhere_and_the_cohort_goes_on(tmp_path):
    """A blank slide, one smaller than a patch and one with most tiles unreadable are excluded
    (qc summary, splits, report, predictions, end-of-run list); a slide with one unreadable tile
    keeps its other patches; the other slides are trained, evaluated and predicted."""
    rows = []
    for i in range(8):
        small_slide(tmp_path / f"s{i}.tiff", i)
        rows.append((f"s{i}", f"s{i}.tiff", "tumor" if i % 2 else "normal"))
    blank = np.full((2000, 2000, 3), 245, np.uint8)
    write_pyramidal_tiff(tmp_path / "blank.tiff", blank, 0.5, downsamples=(1, 4))
    image, *_ = render_tissue(200, 200, 0.5, tumour=False, seed=3)
    write_pyramidal_tiff(tmp_path / "tiny.tiff", image, 0.5, downsamples=(1,))
    small_slide(tmp_path / "damaged.tiff", 8)
    _corrupt_level0_tiles(tmp_path / "damaged.tiff", list(range(16)))
    small_slide(tmp_path / "scratched.tiff", 9)
    _corrupt_level0_tiles(tmp_path / "scratched.tiff", [5])
    for name, label in (
        ("blank", "tumor"),
        ("tiny", "normal"),
        ("damaged", "tumor"),
        ("scratched", "normal"),
    ):
        rows.append((name, f"{name}.tiff", label))
    config = base_config(write_sheet(tmp_path / "s.tsv", rows))
    config["features"]["max_bad_tile_share"] = 0.2
    config["patching"] = {"qc_max_side": 200}  # thumbnails from level 1: level 0 is read by extract
    config.update(
        seeds=[0],
        experiments={"main": [{"model": "span"}, {"model": "abmil"}]},
        run_experiments=["main"],
        training={"epochs": 2},
        predict={"heatmaps": ["span"]},
    )
    res = snakemake(tmp_path, "--cores", "2", config=config)
    assert res.returncode == 0, res.stdout[-3000:]
    out = tmp_path / "results" / "tiny"
    with h5py.File(tmp_path / FEATURES / "blank.h5") as f:
        assert f["features"].shape == (0, 1024)
    with h5py.File(tmp_path / FEATURES / "scratched.h5") as f:
        kept, lost = f["features"].shape[0], f["bad_tiles"].shape[0]
        assert kept > 0 and 0 < lost <= 4 and f.attrs["tiles_total"] == kept + lost
        assert np.isfinite(f["features"][:]).all() and (np.abs(f["features"][:]).sum(1) > 0).all()
    summary = [r.split("\t") for r in (out / "qc" / "summary.tsv").read_text().splitlines()]
    header, reasons = summary[0], {r[0]: r for r in summary[1:]}
    excluded = {k: v[header.index("excluded")] for k, v in reasons.items()}
    assert excluded["blank"].startswith("no tissue") and excluded["tiny"].startswith("no tissue")
    assert excluded["damaged"].startswith("bad tiles: ")
    assert excluded["scratched"] == "" and reasons["scratched"][header.index("bad_tiles")] != "0"
    assert {k for k, v in excluded.items() if v} == {"blank", "tiny", "damaged"}
    splits = {
        r.split("\t")[0]: r.split("\t") for r in (out / "splits.tsv").read_text().splitlines()
    }
    assert splits["s0"][3] in ("train", "val", "test") and splits["scratched"][4] == ""
    for name in ("blank", "tiny", "damaged"):
        assert splits[name][3:] == ["excluded", excluded[name]]
    report = (out / "main" / "report.md").read_text()
    for name in ("blank", "tiny", "damaged"):
        assert f"| {name} | {excluded[name]} |" in report
    assert "## Slides with unreadable tiles" in report and "| scratched |" in report
    for model in ("span", "abmil"):
        predictions = (out / "main" / model / "predictions.csv").read_text()
        assert "s0" in predictions and "scratched" in predictions
        assert not any(name in predictions for name in ("blank", "tiny", "damaged"))
    listing = res.stdout[res.stdout.index("3 slide(s) excluded") :]
    assert "damaged: excluded: bad tiles: " in listing and "re-scan or re-export" in listing


def test_precomputed_features_skip_patching_and_extraction(tmp_path):
    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "clam.h5", "w") as f:  # CLAM: per-region grid, no attributes
        f["features"] = rng.standard_normal((6, 1024)).astype(np.float32)
        f["coords"] = np.array([[13, 7], [237, 7], [461, 7], [13, 231], [237, 231], [461, 231]])
    sheet = write_sheet(
        tmp_path / "s.tsv",
        [("imp", "", "tumor", "clam.h5")],
        header=("slide_id", "path", "label", "features"),
    )
    config = base_config(sheet)
    config["features"]["import_patch_size_level0"] = 224
    res = snakemake(tmp_path, "--cores", "1", config=config)
    assert res.returncode == 0, res.stdout
    assert "rule patch" not in res.stdout and "rule extract" not in res.stdout
    assert "snapped 6 of 6 patches" in res.stdout
    with h5py.File(tmp_path / FEATURES / "imp.h5") as f:
        assert f["features"].shape == (6, 1024)
        np.testing.assert_array_equal(
            f["grid"][:], [[0, 0], [1, 0], [2, 0], [0, 1], [1, 1], [2, 1]]
        )

    # The batch's hidden store and the slide's file deleted: one line says how to redo it.
    shutil.rmtree(tmp_path / FEATURES / ".store")
    (tmp_path / FEATURES / "imp.h5").unlink()
    target = str(FEATURES / "imp.h5")
    res = snakemake(tmp_path, "--cores", "1", target, config=config)
    assert res.returncode != 0
    manifest = FEATURES / "batches" / "import" / "labelled-1.tsv"
    failed = res.stdout[res.stdout.index("1 job(s) failed:") :].splitlines()[1]
    assert failed.startswith("  link_features imp: ") and "not in its batch job's store" in failed
    assert f"Fix: delete {manifest} and run again" in failed
    (tmp_path / manifest).unlink()
    assert snakemake(tmp_path, "--cores", "1", target, config=config).returncode == 0
    assert (tmp_path / FEATURES / "imp.h5").is_file()


#: The per-slide rules that only hard-link a batch's stored file into place: no software
#: beyond the shell's `ln`, and no conda env, whose activation would cost more than the link
#: (once per slide), nor a benchmark record per slide.
LINK_RULES = {"link_demo_slide", "link_patches", "link_features"}


def test_workflow_lint_is_clean():
    """Clean but for the link rules' missing conda envs (see LINK_RULES)."""
    res = subprocess.run(
        [*SNAKEMAKE, "--lint"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    linted = re.findall(r"^Lints for (.*?)[: (]", res.stdout, re.MULTILINE)
    assert linted == ["rule"] * len(LINK_RULES), res.stdout
    assert set(re.findall(r"^Lints for rule (\w+)", res.stdout, re.MULTILINE)) == LINK_RULES
    bullets = re.findall(r"^    \* (.*)$", res.stdout, re.MULTILINE)
    assert set(bullets) == {"Specify a conda environment or container for each rule.:"}


@pytest.mark.parametrize(
    ("experiment", "expected"),
    [
        ("main", {"train": 18, "evaluate": 1, "predict": 6}),
        ("ablation", {"train": 45, "evaluate": 1, "predict": 15}),
        ("window_sweep", {"train": 18, "evaluate": 1, "predict": 6, "sweep_plot": 1}),
    ],
)
def test_experiment_sets_expand_to_their_jobs(tmp_path, experiment, expected):
    """The shipped experiments (3 seeds in the demo config): one training job per variant and
    seed, one evaluation, one prediction job per variant, a sweep plot for the sweep only."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    res = snakemake(
        tmp_path, "-n", "--quiet", "rules", "--config", f"run_experiments=[{experiment}]"
    )
    counts = planned_jobs(res)
    assert {k: counts.get(k, 0) for k in ("train", "evaluate", "predict", "sweep_plot")} == {
        "sweep_plot": 0,
        **expected,
    }


def workflow_rules(*config_args: str):
    """The parsed workflow's rules (Snakemake API), with `--config` style overrides."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, ResourceSettings

    overrides = dict(arg.split("=", 1) for arg in config_args)
    with SnakemakeApi() as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(),
            config_settings=ConfigSettings(config=overrides),
            snakefile=REPO / "Snakefile",
            workdir=REPO,
        )
        return [r for r in workflow._workflow.rules if r.name != "all"]


def test_every_rule_has_a_conda_env_log_and_benchmark():
    rules = workflow_rules()
    assert {r.name for r in rules} >= {"patch", "extract", "split", "train", "evaluate", "predict"}
    for rule in rules:
        if rule.name in LINK_RULES:
            assert rule.name in rule.workflow._localrules and rule.log and not rule.conda_env
            continue
        env = Path(str(rule.basedir), str(rule.conda_env))
        assert rule.conda_env and env.resolve().is_file(), (rule.name, rule.conda_env)
        assert rule.log and rule.benchmark, rule.name
    envs = {r.name: Path(str(r.conda_env)).name for r in workflow_rules("training_env=cuda")}
    assert envs["train"] == envs["predict"] == "training-cuda.yaml"
    assert envs["split"] == envs["evaluate"] == "training.yaml"


def test_conda_envs_parse_and_pin_what_pyproject_pins():
    pins = {
        line.split("==")[0].strip(' "'): line.split("==")[1].strip(' ",')
        for line in (REPO / "pyproject.toml").read_text().splitlines()
        if "==" in line and line.strip().startswith('"torch')
    }
    assert set(pins) == {"torch", "torchvision"}
    files = sorted((REPO / "envs").glob("*.yaml"))
    assert {f.stem for f in files} >= {"slides", "features", "training", "training-cuda"}
    for path in files:
        env = yaml.safe_load(path.read_text())
        assert env["channels"][0] == "conda-forge" and "nodefaults" in env["channels"], path
        pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
        torch_pins = {p.split("==")[0]: p.split("==")[1] for p in pip if p.startswith("torch")}
        assert torch_pins in ({}, pins), (path, torch_pins)
    cuda = yaml.safe_load((REPO / "envs" / "training-cuda.yaml").read_text())
    assert any(p.startswith("spconv-cu120") for p in cuda["dependencies"][-1]["pip"])


def test_jobs_use_the_interpreter_running_snakemake(tmp_path):
    """`.venv/bin/snakemake` without an activated venv: the jobs' `python` is still the one
    with the dependencies (here: a PATH without the venv, where `python` lacks torch)."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    target = "resources/demo/slides/demo_00.tiff"
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    res = subprocess.run(
        [*SNAKEMAKE, "-d", str(tmp_path), "--cores", "1", target],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-3000:]
    assert (tmp_path / target).stat().st_size > 0


def test_variant_training_overrides_reach_its_jobs_only(tmp_path):
    """A variant's `training:` overrides the training section for its own jobs; an option
    `span train` does not have is refused before any job runs."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    experiment = [
        {"model": "span"},
        {"model": "span", "name": "augmented", "training": {"flips": False, "patch_drop": 0.25}},
    ]
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(experiments={"aug": experiment}, run_experiments=["aug"], seeds=[0])
    config["predict"]["heatmaps"] = ["span"]
    res = snakemake(tmp_path, "-n", "-p", "--forceall", config=config)
    commands = [line for line in res.stdout.splitlines() if " train --splits" in line]
    assert res.returncode == 0 and len(commands) == 2, res.stdout[-3000:]
    plain, augmented = sorted(commands, key=lambda c: "--variant augmented" in c)
    assert "--flips" in plain.replace("--no-flips", "") and "--patch-drop 0.0" in plain
    assert "--no-flips" in augmented and "--patch-drop 0.25" in augmented

    experiment[1]["training"] = {"flip": True}
    config.update(experiments={"aug": experiment})
    res = snakemake(tmp_path, "-n", config=config)
    assert res.returncode != 0
    assert "experiments.aug.augmented.training: no option flip" in res.stdout


def test_a_recipe_reaches_its_variants_jobs(tmp_path):
    """`recipe: authors` on one variant: its train and predict jobs get the recipe's training
    flags and SPAN arguments, the other variant keeps the defaults."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    experiment = [{"model": "span"}, {"model": "span", "name": "theirs", "recipe": "authors"}]
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(experiments={"r": experiment}, run_experiments=["r"], seeds=[0])
    res = snakemake(tmp_path, "-n", "-p", "--forceall", config=config)
    commands = [line for line in res.stdout.splitlines() if " train --splits" in line]
    assert res.returncode == 0 and len(commands) == 2, res.stdout[-3000:]
    ours, theirs = sorted(commands, key=lambda c: "--variant theirs" in c)
    for flag in ("--affine", "--no-flips", "--translate 0", "--class-weighted", "--cosine"):
        assert flag in theirs and flag not in ours, flag
    assert "--weight-decay 0.0001" in theirs and '"global_attention": "separate"' in theirs
    assert '"global_attention"' not in ours
    predicts = [line for line in res.stdout.splitlines() if " predict " in line]
    assert any('"global_attention": "separate"' in line for line in predicts)


def test_per_seed_splits_give_each_training_seed_its_own_split(tmp_path):
    """splits.protocol per_seed: one split job per training seed (its seed passed), seed k's
    training jobs read seed k's file, no cohort-wide splits.tsv, and evaluation is told that
    the seeds' test sets differ."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["splits"]["protocol"] = "per_seed"
    config.update(experiments={"e": [{"model": "span"}, {"model": "abmil"}]}, seeds=[0, 3])
    config.update(run_experiments=["e"], predict={"heatmaps": [], "heatmap_max_side": 100})
    res = snakemake(tmp_path, "-n", "-p", "--forceall", config=config)
    counts = planned_jobs(res)
    assert counts["split_per_seed"] == 2 and "split" not in counts and counts["train"] == 4
    lines = res.stdout.splitlines()
    demo = Layout("demo", "resnet18-penultimate")
    for seed in (0, 3):
        split = [x for x in lines if ".log split " in x and f"--training-seed {seed} " in x]
        assert len(split) == 1 and "--protocol per_seed" in split[0], split
        assert split[0].endswith(f"--out {demo.seed_splits(seed)}")
        trains = [x for x in lines if " train --splits" in x and f" --seed {seed} " in x]
        assert len(trains) == 2, trains
        assert all(f"--splits {demo.seed_splits(seed)} " in x for x in trains)
    (evaluate,) = [x for x in lines if re.search(r"\.log evaluate ", x)]
    assert "--protocol per_seed" in evaluate
