# Start-up checks and helpers shared by all rules: config and sample-sheet validation,
# missing-input report, and the mapping from config sections to `span` CLI options (declared
# once, in span/settings/stages.py).

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys

from snakemake.exceptions import WorkflowError
from snakemake_interface_executor_plugins.settings import DeploymentMethod, ExecMode
from snakemake.utils import validate
import pandas as pd
import yaml

# The span package is imported from this checkout, here and in every job's shell, with or
# without --use-conda (the conda envs hold only its dependencies): rules run `python -m span`.
# Without --use-conda that `python` is the interpreter running Snakemake (its environment has
# the dependencies), so `.venv/bin/snakemake` works without activating the venv.
sys.path.insert(0, workflow.basedir)
_python_path = "" if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method else (
    f'export PATH={shlex.quote(os.path.dirname(sys.executable))}:"$PATH"; '
)
shell.prefix(f"export PYTHONPATH={shlex.quote(workflow.basedir)}; {_python_path}")

from span import outputs as FILES
from span.batches import STORE_DIR, batch_of, slide_batches
from span.data.samplesheet import load_sample_sheet, missing_inputs
from span.errors import SpanError
from span.models.registry import MODELS as MODEL_NAMES
from span.settings.options import cli_options, declared
from span.settings.stages import (
    SECTIONS, EncoderSettings, ExclusionSettings, ExtractSettings, ImportSettings, JobSettings,
    PatchSettings, SplitSettings, TrainSettings,
)


def _schema_error(exc):
    """snakemake's multi-line jsonschema report -> `where: what` on one line."""
    text = str(exc)
    what = re.search(r"ValidationError: (.*)", text)
    where = re.search(r"On instance((?:\[[^]]*\])*)", text)
    key = ".".join(re.findall(r"\['?([^]']*)'?\]", where.group(1))) if where else ""
    what = what.group(1) if what else text
    allowed = re.search(r"'description': '([^']*)'", text)  # a pattern's readable form
    if allowed and " does not match " in what:
        what = f"{what.split(' does not match ')[0]} is not valid; use {allowed.group(1)}"
    return f"{key or 'config'}: {what}"


def _check_options():
    """Every key of a stage section of the schema is an option of span/settings/stages.py, so
    it reaches its command: a key without one fails here, not inside a job."""
    with open(os.path.join(workflow.basedir, "workflow/schemas/config.schema.yaml")) as f:
        schema = yaml.safe_load(f)["properties"]
    for section, classes in SECTIONS.items():
        options = {d.name for cls in classes for d in declared(cls)}
        for key in schema[section]["properties"]:
            if key not in options:
                raise WorkflowError(
                    f"config schema key {section}.{key} is not declared in span/settings/"
                    f"stages.py (one of {', '.join(c.__name__ for c in classes)}), so no command "
                    "takes it; declare it there (docs/architecture.md, \"Adding an option\")."
                )


_check_options()

try:
    validate(config, "../schemas/config.schema.yaml")
except WorkflowError as exc:
    raise WorkflowError(
        f"invalid config, {_schema_error(exc)}. Fix it in the config file "
        "(every option is described in config/README.md)."
    ) from None



def _check_devices():
    """A CUDA or MPS device asked in the config must exist on this machine when jobs run here
    (not checked when a cluster executor sends them elsewhere, nor inside a job)."""
    asked = {f"{s}.device": config[s]["device"] for s in ("features", "training")}
    asked = {key: dev for key, dev in asked.items() if dev not in ("auto", "cpu")}
    if not asked or not workflow.local_exec or workflow.exec_mode != ExecMode.DEFAULT:
        return
    probe = "import torch; print(torch.cuda.device_count(), int(torch.backends.mps.is_available()))"
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    try:
        cuda, mps = map(int, found.stdout.split())
    except ValueError:
        return  # no torch in this interpreter (--use-conda): the job itself says it
    for key, dev in asked.items():
        missing = (dev == "mps" and not mps) or (
            dev.startswith("cuda") and int(dev.partition(":")[2] or 0) >= cuda
        )
        if missing:
            have = f"CUDA devices cuda:0..cuda:{cuda - 1}" if cuda else "no CUDA device"
            raise WorkflowError(
                f"invalid config, {key}: {dev} asked but this machine has {have}. Fix: set "
                f"{key}: auto (CUDA when present) or cpu, or run the jobs on a GPU node "
                "(--profile profiles/slurm)."
            )


_check_devices()


def _check_encoder():
    """features.encoder, layer and weights against the torch-free registry (a null layer becomes
    the encoder's published output); a checkpoint or hub weights are also checked to be had and
    to fit, by `span encoders --check` (skipped inside jobs and where torch is missing)."""
    from span.features.registry import ENCODERS, weights_kinds

    feats = config["features"]
    info = ENCODERS.get(feats["encoder"])
    if info is None:
        raise WorkflowError(f"invalid config, features.encoder: unknown encoder "
                            f"{feats['encoder']!r}; choose one of {', '.join(ENCODERS)}")
    feats["layer"] = feats["layer"] or info.default_output
    if feats["layer"] not in info.outputs:
        raise WorkflowError(f"invalid config, features.layer: {info.name} has no output "
                            f"{feats['layer']!r}; choose one of {', '.join(info.outputs)} "
                            f"(or null: {info.default_output})")
    weights = feats["weights"]
    if weights in ("imagenet", "hf-hub") and weights not in weights_kinds(info):
        raise WorkflowError(f"invalid config, features.weights: {info.name} has no {weights} "
                            f"weights; use {', '.join(weights_kinds(info))} or a checkpoint path")
    if weights in ("random", "imagenet") or workflow.exec_mode != ExecMode.DEFAULT:
        return
    check = [sys.executable, "-m", "span", "encoders", "--check",
             *shlex.split(cli_options(feats, EncoderSettings))]
    found = subprocess.run(check, capture_output=True, text=True)
    if found.returncode and "No module named" not in found.stderr:
        line = found.stderr.strip().splitlines()[-1].partition("ERROR span: ")[2]
        raise WorkflowError(f"invalid config, features.weights: {line or found.stderr.strip()}")


_check_encoder()

COHORT = config["cohort"]
RESULTS = f"results/{COHORT}"
DEMO_DIR = "resources/demo/slides"

try:
    SAMPLES = {s.slide_id: s for s in load_sample_sheet(config["samples"], config["classes"])}
except SpanError as exc:
    raise WorkflowError(str(exc)) from None
try:  # all rows at once: the schema is read once, not once per slide
    validate(pd.DataFrame([vars(s) for s in SAMPLES.values()]), "../schemas/samples.schema.yaml")
except WorkflowError as exc:
    raise WorkflowError(f"invalid sample sheet {config['samples']}, {_schema_error(exc)}") from None


def is_demo_slide(path, slide_id):
    """Whether the demo rule makes this slide (demo.generate and the demo path pattern)."""
    return config["demo"]["generate"] and path == f"{DEMO_DIR}/{slide_id}.tiff"


_missing = missing_inputs(SAMPLES.values(), producible=is_demo_slide)
if _missing:
    _listing = "\n  ".join(_missing)
    raise WorkflowError(
        f"{len(_missing)} input file(s) named in {config['samples']} cannot be read:\n"
        f"  {_listing}\nFix the paths in the sample sheet or drop those rows."
    )

PATCHED = sorted(sid for sid, s in SAMPLES.items() if s.needs_patching)
IMPORTED = sorted(sid for sid, s in SAMPLES.items() if not s.needs_patching)
FEATURES_DIR = f"{RESULTS}/features/{config['features']['encoder']}-{config['features']['layer']}"
LABELLED = sorted(sid for sid, s in SAMPLES.items() if s.label)


def one_of(names):
    """Wildcard regex matching exactly these names (never matches when there are none)."""
    return "|".join(re.escape(s) for s in names) or "(?!)"


# Batch jobs: each patches, encodes, imports or (demo) generates many slides in one process
# into a hidden store; a per-slide local rule links each slide's stored file into place
# (span/batches.py, docs/architecture.md "Batch jobs"). A batch re-run (a slide joined it, a
# slide file changed) reuses every stored slide whose inputs and options are unchanged.
PER_JOB = config["jobs"]["slides_per_job"]
DEMO_MADE = sorted(sid for sid, s in SAMPLES.items() if is_demo_slide(s.path, sid))
BATCHES = {
    "demo_slides": slide_batches(DEMO_MADE, DEMO_MADE, PER_JOB),
    "patch": slide_batches(PATCHED, LABELLED, PER_JOB),
    "import_features": slide_batches(IMPORTED, LABELLED, PER_JOB),
}
BATCH_OF = {rule: batch_of(batches) for rule, batches in BATCHES.items()}
MANIFESTS = {
    "demo_slides": f"{RESULTS}/batches/demo_slides",
    "patch": f"{RESULTS}/batches/patch",
    "extract": f"{FEATURES_DIR}/batches/extract",
    "import_features": f"{FEATURES_DIR}/batches/import",
}
STORES = {
    "demo": f"{DEMO_DIR}/{STORE_DIR}",
    "patches": f"{RESULTS}/patches/{STORE_DIR}",
    "features": f"{FEATURES_DIR}/{STORE_DIR}",
}


def batch_slides(rule):
    """Input/params function: the slide ids of a batch job of `rule`'s batches."""
    return lambda w: BATCHES[rule][w.batch]


def manifest_of(rule, slide):
    """The manifest of the batch job of `rule` that makes `slide` (extract: patch's batches)."""
    return f"{MANIFESTS[rule]}/{BATCH_OF['patch' if rule == 'extract' else rule][slide]}.tsv"


def batch_runtime(minutes_per_slide, rule):
    """`runtime` resource (minutes, for a cluster's time limit) of a batch job of `rule`."""
    return lambda w: 10 + minutes_per_slide * len(BATCHES[rule][w.batch])


def features_source(w):
    """What a slide's features file is made from: its batch's manifest and its own input (the
    patch file, or the imported file)."""
    if SAMPLES[w.slide].needs_patching:
        return {"manifest": manifest_of("extract", w.slide),
                "source": f"{RESULTS}/patches/{w.slide}.h5"}
    return {"manifest": manifest_of("import_features", w.slide),
            "source": SAMPLES[w.slide].features}


def link_shell(*pairs):
    """Shell of a per-slide link rule: each (stored file, output) pair, as the rule's shell
    placeholders, hard-linked (no copy, no extra disk), copied where the file system has no
    hard links; a stored file that is gone fails with one line saying how to redo it."""
    steps = [
        f"ln -f {stored} {output} 2>/dev/null || cp {stored} {output} 2>/dev/null || "
        f"{{{{ echo \"link ERROR span: {stored}: not in its batch job's store (deleted?). Fix: "
        f"delete {{input.manifest}} and run again\"; exit 1; }}}}"
        for stored, output in pairs
    ]
    return "(" + " && ".join(steps) + ") > {log} 2>&1"


SPLIT_KEY = "|".join(
    f"{s.slide_id}:{s.patient}:{s.label}:{s.split}" for s in SAMPLES.values() if s.label
)
# Everything the splits depend on but the features files: training re-runs when it changes.
# (splits.tsv is not read as ancient: Snakemake then never re-checks a job downstream of a job
# that re-runs, so a changed split protocol re-wrote splits.tsv and retrained nothing.)
SPLIT_PLAN = hashlib.sha1(
    json.dumps(
        [SPLIT_KEY, config["classes"], config["splits"], config["features"]["max_bad_tile_share"]]
    ).encode()
).hexdigest()

# Options that change speed, never results (declared `speed_only`): the shell command gets them
# as the string resource `span_runtime` (from RUNTIME), not from `params`, because Snakemake
# re-runs a job whose params changed (and string resources are not passed on to cluster jobs,
# which recompute them).
RUNTIME_KEYS = {
    section: tuple(d.name for d in declared(settings) if d.option.speed_only)
    for section, settings in (
        ("jobs", JobSettings), ("features", ExtractSettings), ("training", TrainSettings)
    )
}


def _experiment(name, entries):
    """Config list of variants -> {variant name: variant}, checked before any job runs."""
    variants = {}
    for entry in entries:
        variant = {"hparams": {}, "training": {}, "teacher": None, **entry}
        variant.setdefault("name", variant["model"])
        where = f"invalid config, experiments.{name}.{variant['name']}"
        if variant["model"] not in MODEL_NAMES:
            raise WorkflowError(f"{where}: unknown model {variant['model']!r}; choose one of "
                                f"{', '.join(MODEL_NAMES)}")
        allowed = set(config["training"]) - set(RUNTIME_KEYS["training"])
        unknown = sorted(set(variant["training"]) - allowed)
        if unknown:
            raise WorkflowError(f"{where}: training has no option {', '.join(unknown)}; a variant "
                                f"may set {', '.join(sorted(allowed))}")
        if variant["name"] in variants:
            raise WorkflowError(f"{where}: two variants share this name; set `name:`")
        variants[variant["name"]] = variant
    for variant in variants.values():
        if variant["teacher"] and variant["teacher"] not in variants:
            raise WorkflowError(f"invalid config, experiments.{name}.{variant['name']}: "
                                f"teacher {variant['teacher']!r} is not a variant of {name}")
    return variants


EXPERIMENTS = {name: _experiment(name, entries) for name, entries in config["experiments"].items()}
SEEDS = config["seeds"]
# Conda env (relative to workflow/rules/) of the training and prediction jobs.
TRAINING_ENV = {"cpu": "../../envs/training.yaml", "cuda": "../../envs/training-cuda.yaml"}[
    config["training_env"]
]
RUN_EXPERIMENTS = config["run_experiments"] or list(EXPERIMENTS)
for _name in RUN_EXPERIMENTS:
    if _name not in EXPERIMENTS:
        raise WorkflowError(f"invalid config, run_experiments: {_name!r} is not an experiment; "
                            f"choose from {', '.join(EXPERIMENTS)}")
_VARIANTS = sorted({v for variants in EXPERIMENTS.values() for v in variants})
_no_heatmap = sorted(set(config["predict"]["heatmaps"]) - set(_VARIANTS))
if _no_heatmap:
    raise WorkflowError(f"invalid config, predict.heatmaps: no experiment has a variant named "
                        f"{', '.join(map(repr, _no_heatmap))}; choose from {', '.join(_VARIANTS)}")


def sweep_parameter(variants):
    """The hyperparameter an experiment sweeps, or None: all variants share a model and set
    one numeric hparam to distinct values, and nothing else differs (e.g. window_sweep)."""
    models = {v["model"] for v in variants.values()}
    keys = {frozenset(v["hparams"]) for v in variants.values()}
    trainings = {json.dumps(v["training"], sort_keys=True) for v in variants.values()}
    if len(models) != 1 or len(keys) != 1 or len(trainings) != 1:
        return None
    if any(v["teacher"] for v in variants.values()):
        return None
    varying = [
        k for k in next(iter(keys)) if len({json.dumps(v["hparams"][k]) for v in variants.values()}) > 1
    ]
    if len(varying) != 1 or len(variants) < 2:
        return None
    values = [v["hparams"][varying[0]] for v in variants.values()]
    numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x in values)
    return varying[0] if numeric and len(set(values)) == len(values) else None


SWEEPS = {
    name: key for name, variants in EXPERIMENTS.items() if (key := sweep_parameter(variants))
}


def run_dir(experiment, variant, seed):
    """Folder of one training run."""
    return f"{RESULTS}/{experiment}/{variant}/seed{seed}"


def draws_heatmaps(w):
    """Whether the variant's prediction job draws heatmaps (predict.heatmaps)."""
    return w.variant in config["predict"]["heatmaps"]


def heatmaps_first(w):
    """Job priority: variants with heatmaps train, then predict, before the others, so that
    their prediction job, the longest, runs beside the other trainings, not alone at the end."""
    return int(draws_heatmaps(w))


def teacher_inputs(w):
    """The same-seed run of the variant's teacher (MHIM), if any."""
    teacher = EXPERIMENTS[w.experiment][w.variant]["teacher"]
    if not teacher:
        return {}
    return {
        "teacher": f"{run_dir(w.experiment, teacher, w.seed)}/{FILES.CHECKPOINT}",
        "teacher_metrics": f"{run_dir(w.experiment, teacher, w.seed)}/{FILES.METRICS_JSON}",
    }


def train_hparams(w):
    """The variant's hyperparameters, plus its teacher's checkpoint when it has one. A function
    of the wildcards only: Snakemake leaves params derived from `input` out of its re-run
    check, and a changed hyperparameter must retrain."""
    hparams = dict(EXPERIMENTS[w.experiment][w.variant]["hparams"])
    if teacher := teacher_inputs(w).get("teacher"):
        hparams["teacher_checkpoint"] = teacher
    return shlex.quote(json.dumps(hparams, sort_keys=True))


def train_options(w):
    """`span train` options: the training section, with the variant's own overrides."""
    variant = EXPERIMENTS[w.experiment][w.variant]
    return cli_options(
        {**config["training"], **variant["training"]}, TrainSettings, skip=RUNTIME_KEYS["training"]
    )


def evaluation_runs(w):
    """`--run VARIANT DIR...` options in the experiment's variant order (the first is the
    reference)."""
    return " ".join(
        "--run " + " ".join([v, *(run_dir(w.experiment, v, s) for s in SEEDS)])
        for v in EXPERIMENTS[w.experiment]
    )


def variant_labels(w):
    """JSON {variant: display label} of the variants that set `label` (tables and plots)."""
    labels = {n: v["label"] for n, v in EXPERIMENTS[w.experiment].items() if v.get("label")}
    return shlex.quote(json.dumps(labels, sort_keys=True))


def sweep_values(w):
    """JSON {variant: value of the swept hyperparameter} of a sweep experiment."""
    key = SWEEPS[w.experiment]
    values = {n: v["hparams"][key] for n, v in EXPERIMENTS[w.experiment].items()}
    return shlex.quote(json.dumps(values, sort_keys=True))


def runtime_options(section, settings):
    """The `--key value` options of a section's speed-only keys (threads go by `threads:`)."""
    speed = {k: config[section][k] for k in RUNTIME_KEYS[section] if k != "threads"}
    return cli_options(speed, settings)


RUNTIME = {
    "batch": runtime_options("jobs", JobSettings),
    "extract": " ".join(
        (runtime_options("features", ExtractSettings), runtime_options("jobs", JobSettings))
    ),
    "train": runtime_options("training", TrainSettings),
}


wildcard_constraints:
    slide=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    batch=r"(labelled|unlabelled)-[0-9]+",
    experiment=one_of(EXPERIMENTS),
    variant=one_of({v for variants in EXPERIMENTS.values() for v in variants}),
    seed=r"\d+",
