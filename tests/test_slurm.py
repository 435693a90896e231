"""The SLURM profile: what snakemake makes of README's cluster command (fast), and the pipeline
on a real one-node SLURM cluster, an extraction cancelled mid-slide included (opt-in:
SPAN_TEST_SLURM=1, needs root and apt-get)."""

from __future__ import annotations

import copy
import csv
import getpass
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from span.slides.tiff_writer import write_pyramidal_tiff
from span.synthetic.tissue import render_tissue
from tests.workflow_helpers import REPO, SNAKEMAKE, TINY, base_config, snakemake, write_sheet

SLURM_PROFILE = REPO / "profiles" / "slurm"
WORKFLOW_PROFILE = REPO / "profiles" / "default"
CLUSTER_COMMAND = ["--profile", "profiles/slurm", "--configfile", "config/config.yaml"]


def profile(path: Path) -> dict:
    """A profile folder's config.yaml as a dict."""
    return yaml.safe_load((path / "config.yaml").read_text())


GPU_RULES = {"extract", "train", "predict"}


def workflow_rules() -> set[str]:
    """Names of every rule in workflow/rules/*.smk that runs as a cluster job (the link_* rules
    run on the login node: `localrule: True`)."""
    text = "".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    return set(re.findall(r"^\s*rule (\w+):", text, re.MULTILINE)) - {
        name for name in re.findall(r"^\s*rule (link_\w+):", text, re.MULTILINE)
    }


def test_link_rules_are_local():
    text = "".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    for block in re.split(r"^\s*rule ", text, flags=re.MULTILINE)[1:]:
        assert block.startswith("link_") == ("localrule: True" in block), block[:40]


def test_workflow_profile_sets_no_key_of_the_slurm_profile():
    """profiles/default is loaded last and wins per key, so a shared key would silently
    replace the cluster setting (default-resources, executor...)."""
    shared = set(profile(WORKFLOW_PROFILE)) & set(profile(SLURM_PROFILE))
    assert not shared, f"profiles/default overrides profiles/slurm on {shared}"


def test_cluster_command_parses_to_the_slurm_executor(monkeypatch):
    """README's command, parsed by snakemake itself: slurm executor and settings, the
    workflow profile's settings too, and memory that grows with each attempt."""
    from snakemake.cli import parse_args

    monkeypatch.chdir(REPO)
    _, args = parse_args(CLUSTER_COMMAND)
    assert args.executor == "slurm"
    assert (args.jobs, args.retries, args.latency_wait) == (100, 2, 60)
    assert args.keep_going and args.rerun_incomplete  # from profiles/default
    # Real clusters: sacct follows the jobs, accounts are used.
    assert not {"slurm-status-command", "slurm-no-account"} & set(profile(SLURM_PROFILE))

    defaults = dict(arg.split("=", 1) for arg in args.default_resources.args)
    assert defaults["cpus_per_task"] == "threads" and defaults["runtime"] == "60"
    assert set(args.set_resources) == workflow_rules()  # a new rule needs its entry
    raw = {
        rule: {name: res.raw for name, res in resources.items()}
        for rule, resources in args.set_resources.items()
    }
    assert all(re.fullmatch(r"\d+ \* attempt", r["mem_mb"]) for r in raw.values()), raw
    assert {rule for rule, r in raw.items() if "gpu" in r} == GPU_RULES
    assert all(raw[rule]["gpu"] == 1 for rule in GPU_RULES)


def test_cluster_command_dry_run_gives_jobs_the_slurm_resources(tmp_path):
    """The demo config planned through README's command: training asks for a GPU, 16 GB
    and one CPU; extraction for a GPU, 8 GB and 8 CPUs (tile readers); the demo's 64 slides
    make 2 SLURM jobs per slide stage."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    res = subprocess.run(
        # A dry run caps threads at its --cores (default 1); a cluster run does not.
        [*SNAKEMAKE, "-d", str(tmp_path), *CLUSTER_COMMAND, "-n", "--cores", "8"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout
    assert "Using profiles profiles/slurm and workflow specific profile" in res.stdout
    resources = {}
    for block in res.stdout.split("\nrule ")[1:]:
        rule = block.split(":", 1)[0]
        resources.setdefault(rule, re.search(r"resources: (.*)", block).group(1).split(", "))
    assert {"mem_mb=16000", "gpu=1", "cpus_per_task=1", "runtime=720"} <= set(resources["train"])
    assert {"mem_mb=8000", "gpu=1", "cpus_per_task=8"} <= set(resources["extract"])
    assert {"mem_mb=8000", "gpu=1"} <= set(resources["predict"])
    assert not any(r.startswith("gpu=") for r in resources["patch"])
    jobs = re.findall(r"^(?:local)?rule (\w+):", res.stdout, re.MULTILINE)
    assert jobs.count("patch") == jobs.count("extract") == jobs.count("demo_slides") == 2
    assert len([j for j in jobs if j.startswith("link_")]) == 3 * 64


# --- A real cluster -----------------------------------------------------------------------

SLURM_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "sinfo", "scancel")


def _install_slurm() -> None:
    """Debian's slurm-wlm and munge, unless already installed (no apt-get update then)."""
    if all(shutil.which(b) for b in SLURM_BINARIES):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Keep the packages from starting their system services (a munged of their own).
    policy = Path("/usr/sbin/policy-rc.d")
    ours = not policy.exists()
    if ours:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        for cmd in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "slurm-wlm", "munge"],
        ):
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}"
    finally:
        if ours:
            policy.unlink()


def _free_ports(n: int) -> list[int]:
    """n distinct TCP ports that nothing listens on now."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _slurm_conf(state: Path) -> str:
    """One node (this host, its CPUs and topology from `slurmd -C`), one partition, no
    accounting, no cgroups; every file under `state`."""
    node = dict(
        item.split("=", 1) for item in subprocess.check_output(["slurmd", "-C"], text=True).split()
    )
    host = node["NodeName"]
    # The profile's memory requests are bookkeeping only here (task/none enforces nothing):
    # config_overrides lets a small CI machine announce enough memory for the largest one.
    node["RealMemory"] = str(max(int(node["RealMemory"]), 64000))
    node_line = " ".join(f"{k}={v}" for k, v in node.items() if k != "UpTime")
    ctld_port, slurmd_port = _free_ports(2)
    return f"""\
ClusterName=spantest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={state}/munge.socket
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/spool
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
ReturnToService=2
# Finished jobs stay visible to squeue (the status command here) for an hour.
MinJobAge=3600
{node_line} NodeAddr=127.0.0.1 State=UNKNOWN
# The default partition: the profile sets none, so the plugin picks this one.
PartitionName=ci Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture
def slurm_env():
    """A running one-node SLURM cluster (munged, slurmctld, slurmd started here); yields the
    environment that reaches it. Stops the daemons by PID and removes all their files."""
    if os.environ.get("SPAN_TEST_SLURM") != "1":
        pytest.skip(
            "real SLURM cluster test: set SPAN_TEST_SLURM=1 to run it (as root: it installs "
            "slurm-wlm and munge with apt-get and starts a one-node cluster)"
        )
    if os.geteuid() != 0:
        pytest.skip("SPAN_TEST_SLURM=1: the test cluster's daemons must run as root")
    if not all(shutil.which(b) for b in SLURM_BINARIES) and not shutil.which("apt-get"):
        pytest.skip("SPAN_TEST_SLURM=1: slurm-wlm and munge are missing and there is no apt-get")
    _install_slurm()
    # Short path (unix socket length) that every user may traverse (munged checks it).
    state = Path(tempfile.mkdtemp(prefix="span-slurm-", dir="/tmp"))
    state.chmod(0o755)
    (state / "ctld").mkdir()
    (state / "spool").mkdir()
    key = state / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    conf = state / "slurm.conf"
    conf.write_text(_slurm_conf(state))
    # Inside a job the plugin drops every SLURM_* variable, SLURM_CONF too, before its srun:
    # real clusters keep slurm.conf at /etc/slurm, this one gets it back through a wrapper.
    (state / "bin").mkdir()
    srun = state / "bin" / "srun"
    srun.write_text(f'#!/bin/sh\nSLURM_CONF={conf} exec {shutil.which("srun")} "$@"\n')
    srun.chmod(0o755)
    env = {
        **os.environ,
        "SLURM_CONF": str(conf),
        # Jobs inherit this environment (sbatch --export=ALL): the venv's python comes first.
        "PATH": os.pathsep.join(
            [str(Path(sys.executable).parent), str(srun.parent), os.environ["PATH"]]
        ),
    }
    daemons = []
    try:
        for cmd in (
            ["munged", "-F", f"--socket={state}/munge.socket", f"--key-file={key}"]
            + [f"--{f}-file={state}/munged.{f}" for f in ("pid", "log", "seed")],
            ["slurmctld", "-D", "-f", str(conf)],
            ["slurmd", "-D", "-f", str(conf)],
        ):
            with (state / f"{cmd[0]}.out").open("w") as out:
                daemons.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT))
            time.sleep(0.5)
        deadline = time.monotonic() + 60
        while _sinfo_state(env) != "idle":
            if time.monotonic() > deadline or any(d.poll() is not None for d in daemons):
                logs = "\n".join(p.read_text()[-2000:] for p in sorted(state.glob("*.out")))
                raise RuntimeError(f"the test SLURM node did not become idle:\n{logs}")
            time.sleep(0.5)
        yield env
    finally:
        if len(daemons) == 3:
            subprocess.run(["scancel", "--user", getpass.getuser()], env=env, timeout=30)
        for daemon in reversed(daemons):
            daemon.terminate()
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        shutil.rmtree(state)


def _sinfo_state(env: dict) -> str:
    """The node's compact state (idle, down...), empty while the controller is not up."""
    cmd = ["sinfo", "-h", "-o", "%t"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    return res.stdout.strip()


def _slurm_jobs(env: dict) -> list[dict]:
    """Every job slurmctld still knows: id, state, memory, CPUs, GRES, rule and wildcards."""
    fmt = "%i|%T|%m|%C|%b|%P|%k"
    out = subprocess.check_output(
        ["squeue", "--states=all", "--noheader", f"--format={fmt}"], env=env, text=True
    )
    keys = ("id", "state", "mem", "cpus", "gres", "partition", "comment")
    return [dict(zip(keys, line.split("|"), strict=True)) for line in out.splitlines()]


def _cluster_command(folder: Path) -> list[str]:
    """Snakemake with profiles/slurm plus a CI overlay written into `folder`: no accounting
    (squeue follows the jobs), no GPU, one CPU per extraction, status checked every second."""
    set_resources = copy.deepcopy(profile(SLURM_PROFILE)["set-resources"])
    for rule in GPU_RULES:  # the CI node has no GPU: README's one-line override, in the overlay
        assert set_resources[rule].pop("gpu") == 1
    set_resources["extract"]["cpus_per_task"] = 1  # a small CI machine
    overlay = {
        # No accounting here: sacct sees no job, so follow them with squeue.
        "slurm-status-command": "squeue",
        # No account (plugin 2.8 ignores this flag, but its sacct guess finds none here).
        "slurm-no-account": True,
        # Check soon after submission (the plugin waits 40 s by default).
        "slurm-init-seconds-before-status-checks": 1,
        "seconds-between-status-checks": 1,
        "set-resources": set_resources,
    }
    (folder / "ci-profile").mkdir()
    (folder / "ci-profile" / "config.yaml").write_text(yaml.safe_dump(overlay))
    return [*SNAKEMAKE, "--profile", str(SLURM_PROFILE), "--profile", str(folder / "ci-profile")]


def clam_features(path: Path, seed: int) -> Path:
    """A CLAM-layout features file (random 1024-d rows on a 5 x 4 grid of 224-px patches)
    stamped with the extracted slides' encoder, so the cohort mixes both kinds."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f["features"] = rng.standard_normal((20, 1024)).astype(np.float32)
        f["coords"] = np.array([(224 * x, 224 * y) for y in range(4) for x in range(5)])
        f.attrs.update(encoder="resnet50", layer="layer3", weights="random")
    return path


@pytest.mark.slow
def test_pipeline_runs_on_a_real_slurm_cluster(tmp_path, slurm_env):
    """profiles/slurm plus a CI overlay (no accounting, no GPU) on a one-node cluster: every
    batch and cohort job runs as a SLURM job, the per-slide links on the login node; the
    number of submissions is what the batches make. With jobs.strict, the unreadable slide
    fails its batch job, retried with more memory each time and reported; without, it is
    excluded and the run completes, checked by content."""
    image, *_ = render_tissue(600, 650, 0.5, tumour=False, seed=40)
    write_pyramidal_tiff(tmp_path / "s0.tiff", image, 0.5, downsamples=(1, 4, 16))
    rows = [("s0", "s0.tiff", "normal", "train", "")]
    for i, split in enumerate(["train", "val", "val", "test", "test"], start=1):
        features = clam_features(tmp_path / f"s{i}.h5", seed=i)
        rows.append((f"s{i}", "", "tumor" if i % 2 else "normal", split, features.name))
    (tmp_path / "bad.svs").write_bytes(b"II*\x00" + bytes(200))
    rows.append(("bad", "bad.svs", "", "", ""))
    header = ("slide_id", "path", "label", "split", "features")
    sheet = write_sheet(tmp_path / "s.tsv", rows, header)
    config = base_config(sheet)
    config["features"]["import_patch_size_level0"] = 224
    config.update(
        jobs={"strict": True},
        seeds=[0],
        training={"epochs": 1, "patience": 1, "threads": 1, "standardize": True},
        experiments={
            "tiny": [
                {"model": "span", "hparams": {"embed_dim": 32, "heads": 4}},
                {"model": "abmil", "hparams": {"hidden": 64, "attention_hidden": 16}},
            ]
        },
        predict={"heatmaps": ["span"], "heatmap_max_side": 200},
    )
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))

    cmd = [*_cluster_command(tmp_path), "--configfile", "config.yaml"]

    def run():
        """Run the workflow; return its output and the SLURM jobs it submitted."""
        res = subprocess.run(
            cmd,
            cwd=tmp_path,
            env=slurm_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=600,
        )
        submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", res.stdout)
        jobs = [j for j in _slurm_jobs(slurm_env) if j["id"] in set(submitted)]
        assert len(jobs) == len(submitted), (submitted, jobs)
        return res, jobs

    # Run 1 (strict): the batch with the unreadable slide fails three times (retries: 2), each
    # time with more memory; everything that does not need it finishes (keep-going).
    res, jobs = run()
    assert res.returncode != 0 and "Error in rule patch" in res.stdout, res.stdout[-3000:]
    failed = sorted((j["comment"], j["mem"]) for j in jobs if j["state"] != "COMPLETED")
    bad_batch = "rule_patch_wildcards_unlabelled-1"
    assert failed == [(bad_batch, f"{mem}M") for mem in (2000, 4000, 6000)]
    logs = list((tmp_path / ".snakemake/slurm_logs/rule_patch/unlabelled-1").glob("*.log"))
    assert len(logs) == 3
    assert all("bad.svs: not a readable slide" in log.read_text() for log in logs)
    # One job per batch: patch (s0; the bad one 3 times), extract (s0), import (s1-s5), then
    # the split and 2 trainings; the evaluation waits for the QC summary (its report lists
    # the excluded slides), which waits for every slide. The per-slide links ran on the login
    # node.
    counts = {}
    for j in jobs:
        rule = j["comment"].split("_wildcards_")[0].removeprefix("rule_")
        counts[rule] = counts.get(rule, 0) + 1
    assert counts == {
        "patch": 4,
        "extract": 1,
        "import_features": 1,
        "split": 1,
        "train": 2,
    }, counts
    assert res.stdout.count("localrule link_") == 7  # s0: patches, features; s1-s5: features
    # Training on the default partition with the profile's memory, one CPU, no GPU.
    train = [
        (j["mem"], j["cpus"], j["gres"], j["partition"]) for j in jobs if "train" in j["comment"]
    ]
    assert train == 2 * [("16000M", "1", "N/A", "ci")]
    rules = set(counts)

    # Run 2 (not strict): the bad slide is excluded; its batch's two jobs, the QC summary, the
    # evaluation and the predictions are left.
    config["jobs"] = {"strict": False}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    res, jobs = run()
    assert res.returncode == 0, res.stdout[-3000:]
    assert all(j["state"] == "COMPLETED" for j in jobs), jobs
    assert sorted(j["comment"] for j in jobs) == [
        "rule_evaluate_wildcards_tiny",
        "rule_extract_wildcards_unlabelled-1",
        "rule_patch_wildcards_unlabelled-1",
        "rule_predict_wildcards_tiny_abmil",
        "rule_predict_wildcards_tiny_span",
        "rule_qc_summary",
    ]
    rules |= {"evaluate", "predict", "qc_summary"}
    assert rules == workflow_rules() - {"demo_slides", "sweep_plot"}

    out = tmp_path / "results" / "tiny"
    summary = {r.split("\t")[0]: r for r in (out / "qc" / "summary.tsv").read_text().splitlines()}
    assert len(summary) == 1 + len(rows)  # header + every slide, patched or imported
    assert "cannot be read (not a readable slide" in summary["bad"]
    assert "| Method | Accuracy" in (out / "tiny" / "report.md").read_text()
    for variant in ("span", "abmil"):
        with (out / "tiny" / variant / "predictions.csv").open() as f:
            means = [r for r in csv.DictReader(f) if r["run"] == "mean"]
        assert sorted(r["slide_id"] for r in means) == [r[0] for r in rows if r[0] != "bad"]
        assert all(abs(float(r["prob_normal"]) + float(r["prob_tumor"]) - 1) < 1e-4 for r in means)
    assert [p.name for p in (out / "tiny" / "span" / "heatmaps").glob("*.png")] == ["s0.png"]


# --- A cancelled extraction ----------------------------------------------------------------

#: A cohort of one unlabelled slide whose extraction flushes every 2 batches of 4 patches.
CHUNK = 8
CANCELLED_BATCH = "unlabelled-1"


def _one_slide_cohort(folder: Path, slide: Path) -> dict:
    """The config, also written to `folder`/config.yaml, of `slide` alone, unlabelled, extracted
    in chunks of CHUNK patches (137 patches of 224 px: about 7 s on one CPU thread, a flush
    every 0.4 s)."""
    folder.mkdir()
    sheet = write_sheet(folder / "s.tsv", [("s0", str(slide), "")])
    config = base_config(sheet)
    # On the CPU even where a GPU is visible: a GPU would finish before the cancel lands.
    config["features"].update(batch_size=CHUNK // 2, flush_every=CHUNK, device="cpu")
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return config


def _flushed(job_log: Path) -> int:
    """Patches that an extraction job's log says are flushed to its partial file (0 before
    the first flush, or before the log exists)."""
    text = job_log.read_text() if job_log.is_file() else ""
    counts = re.findall(r": flushed (\d+)/\d+ patches", text)
    return int(counts[-1]) if counts else 0


def _cancel_after_flush(run: subprocess.Popen, job_log: Path, env: dict, comment: str) -> int:
    """Wait until the running SLURM job named by `comment` has flushed a chunk (its log says
    so), then scancel it, as a user or an admin would; returns the patches flushed by then."""
    deadline = time.monotonic() + 300
    while (flushed := _flushed(job_log)) == 0:
        assert run.poll() is None, "snakemake ended before the extraction flushed"
        assert time.monotonic() < deadline, "the extraction flushed nothing within 300 s"
        time.sleep(0.1)
    jobs = _slurm_jobs(env)
    running = [j["id"] for j in jobs if j["comment"] == comment and j["state"] == "RUNNING"]
    assert len(running) == 1, jobs
    subprocess.run(["scancel", running[0]], env=env, check=True, timeout=30)
    return flushed


def _feature_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of a features file (features, coords, grid, bad_tiles)."""
    with h5py.File(path, "r") as f:
        return {name: f[name][:] for name in f}


@pytest.mark.slow
def test_cancelled_extraction_is_retried_and_resumes_at_its_last_flush(tmp_path, slurm_env):
    """scancel of an extraction job after it flushed: the slurm executor reports the job
    CANCELLED, i.e. failed, so the profile's `retries` resubmit it (with the next attempt's
    memory); the retry resumes the slide at its last flush, the run ends without a failure,
    and the features equal those of an uninterrupted local extraction of the same slide."""
    image, *_ = render_tissue(1800, 1800, 0.5, tumour=False, seed=40)
    write_pyramidal_tiff(tmp_path / "s0.tiff", image, 0.5, downsamples=(1, 4, 16))
    cluster, local = tmp_path / "cluster", tmp_path / "local"
    _one_slide_cohort(cluster, tmp_path / "s0.tiff")
    target = TINY.features("s0")
    job_log = cluster / TINY.log("extract", CANCELLED_BATCH)
    comment = f"rule_extract_wildcards_{CANCELLED_BATCH}"

    cmd = [*_cluster_command(cluster), target, "--configfile", "config.yaml"]
    with (cluster / "snakemake.out").open("w") as out:
        run = subprocess.Popen(cmd, cwd=cluster, env=slurm_env, stdout=out, stderr=out)
        try:
            flushed = _cancel_after_flush(run, job_log, slurm_env, comment)
            run.wait(timeout=600)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
    output = (cluster / "snakemake.out").read_text()
    assert run.returncode == 0, output[-3000:]

    # The cancelled job, then its retry with attempt 2's memory (extract: 8000 * attempt).
    extract = sorted(
        (int(j["id"]), j["state"], j["mem"])
        for j in _slurm_jobs(slurm_env)
        if j["comment"] == comment
    )
    assert [(state, mem) for _, state, mem in extract] == [
        ("CANCELLED", "8000M"),
        ("COMPLETED", "16000M"),
    ], extract
    assert "SLURM status is: 'CANCELLED'" in output
    # The retry's log (it replaces the cancelled attempt's) starts where the last flush ended.
    resumed = re.search(r"resuming after (\d+) of (\d+) patches", job_log.read_text())
    assert resumed, job_log.read_text()
    at, total = int(resumed.group(1)), int(resumed.group(2))
    print(f"\ncancelled after the log said {flushed}/{total}; the retry {resumed.group(0)}")
    assert flushed <= at < total and at % CHUNK == 0, (flushed, at, total)
    # A clean end: every step done, no failed job listed, no partial file left behind.
    assert "steps (100%) done" in output and "job(s) failed" not in output, output[-3000:]
    store = cluster / TINY.store("features")
    assert not list(store.glob(".*partial*")), list(store.iterdir())

    config = _one_slide_cohort(local, tmp_path / "s0.tiff")
    res = snakemake(local, "--cores", "1", target, config=config)
    assert res.returncode == 0, res.stdout[-3000:]
    resumed_features = _feature_arrays(cluster / target)
    uninterrupted = _feature_arrays(local / target)
    assert resumed_features.keys() == uninterrupted.keys()
    assert len(resumed_features["features"]) == total
    for name, array in uninterrupted.items():
        np.testing.assert_array_equal(resumed_features[name], array, err_msg=name)
