# Glue between Snakemake and the workflow's plan (span/plan/, torch-free and unit-tested): the
# config and sample sheet checked, the plan built, one `span check` for what needs torch, and
# the plan's methods bound to the rules' wildcards.

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
_python_path = (
    ""
    if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
    else (f'export PATH={shlex.quote(os.path.dirname(sys.executable))}:"$PATH"; ')
)
shell.prefix(f"export PYTHONPATH={shlex.quote(workflow.basedir)}; {_python_path}")

from span import outputs as FILES
from span.data.samplesheet import SLIDE_ID, load_sample_sheet, missing_inputs
from span.errors import SpanError
from span.plan.config import check_schema_declared, feature_width, schema_error
from span.plan.workflow import WorkflowPlan


def _checked(step, *args):
    """Run a plan step; its SpanError becomes Snakemake's one-line start-up error."""
    try:
        return step(*args)
    except SpanError as exc:
        raise WorkflowError(str(exc)) from None


with open(os.path.join(workflow.basedir, "workflow/schemas/config.schema.yaml")) as _f:
    _checked(check_schema_declared, yaml.safe_load(_f))
try:
    validate(config, "../schemas/config.schema.yaml")
except WorkflowError as exc:
    raise WorkflowError(
        f"invalid config, {schema_error(str(exc))}. Fix it in the config file "
        "(every option is described in config/README.md)."
    ) from None
SAMPLES = {s.slide_id: s for s in _checked(load_sample_sheet, config["samples"], config["classes"])}
try:  # all rows at once: the schema is read once, not once per slide
    validate(pd.DataFrame([vars(s) for s in SAMPLES.values()]), "../schemas/samples.schema.yaml")
except WorkflowError as exc:
    raise WorkflowError(
        f"invalid sample sheet {config['samples']}, {schema_error(str(exc))}"
    ) from None
PLAN = _checked(WorkflowPlan.from_config, config, SAMPLES)
_missing = missing_inputs(SAMPLES.values(), producible=PLAN.cohort.is_demo_slide)
if _missing:
    raise WorkflowError(
        f"{len(_missing)} input file(s) named in {config['samples']} cannot be read:\n  "
        + "\n  ".join(_missing)
        + "\nFix the paths in the sample sheet or drop those rows."
    )


def _torch_checks():
    """`span check`, once, before any job: the devices asked (when jobs run on this machine),
    the encoder's weights (a checkpoint or the hub) and field (the patches), and every
    variant's model. Skipped inside
    cluster jobs and where torch is missing (--use-conda: the jobs say it)."""
    if workflow.exec_mode != ExecMode.DEFAULT:
        return
    feats = config["features"]
    words = [
        "--variants",
        PLAN.model_checks(),
        "--in-dim",
        str(feature_width(feats, feats["layer"])),
        "--n-classes",
        str(len(config["classes"])),
    ]
    if workflow.local_exec:
        words += [f"--device={s}.device={config[s]['device']}" for s in ("features", "training")]
    words += ["--encoder", feats["encoder"], "--layer", feats["layer"]]
    words += ["--weights", feats["weights"]]
    if PLAN.cohort.patched:  # slides to encode: their patches must be the encoder's field
        patching = config["patching"]
        words += ["--patching", str(patching["patch_size"]), str(patching["target_mpp"])]
    found = subprocess.run(
        [sys.executable, "-m", "span", "check", *words], capture_output=True, text=True
    )
    if found.returncode and "No module named" not in found.stderr:
        line = found.stderr.strip().splitlines()[-1]
        raise WorkflowError(line.partition("ERROR span: ")[2] or found.stderr.strip())


_torch_checks()

# Names the rules use.
LAYOUT = PLAN.layout
EXPERIMENTS, SEEDS, SWEEPS = PLAN.experiments, PLAN.seeds, PLAN.sweeps
BATCHES = {rule: PLAN.cohort.batches(rule) for rule in ("demo_slides", "patch", "import_features")}
BATCH_OF = {rule: PLAN.cohort.batch_of(rule) for rule in BATCHES}
TRAINING_ENV = (
    f"../../envs/{'training-cuda' if config['training_env'] == 'cuda' else 'training'}.yaml"
)


def batch_slides(rule):
    """Params function: the slide ids of a batch job of `rule`'s batches."""
    return lambda w: BATCHES[rule][w.batch]


def batch_runtime(minutes_per_slide, rule):
    """`runtime` resource (minutes, for a cluster's time limit) of a batch job of `rule`."""
    return lambda w: 10 + minutes_per_slide * len(BATCHES[rule][w.batch])


def manifest_of(rule, slide):
    """The manifest of the batch job of `rule` that makes `slide` (extract: patch's batches)."""
    return LAYOUT.manifest(rule, BATCH_OF["patch" if rule == "extract" else rule][slide])


def features_source(w):
    """A slide's features come from its batch's manifest and its patch file, or its import."""
    if SAMPLES[w.slide].needs_patching:
        return {"manifest": manifest_of("extract", w.slide), "source": LAYOUT.patches(w.slide)}
    return {
        "manifest": manifest_of("import_features", w.slide),
        "source": SAMPLES[w.slide].features,
    }


def link_shell(*pairs):
    """Shell of a per-slide link rule: each (stored file, output) pair hard-linked (no copy, no
    extra disk), copied where the file system has no hard links; a stored file that is gone
    fails with one line saying how to redo it."""
    steps = [
        f"ln -f {stored} {output} 2>/dev/null || cp {stored} {output} 2>/dev/null || "
        f"{{{{ echo \"link ERROR span: {stored}: not in its batch job's store (deleted?). Fix: "
        f'delete {{input.manifest}} and run again"; exit 1; }}}}'
        for stored, output in pairs
    ]
    return "(" + " && ".join(steps) + ") > {log} 2>&1"


def one_of(names):
    """Wildcard regex matching exactly these names (never matches when there are none)."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


def priority(w):
    """Job priority of a variant's training and prediction (`WorkflowPlan.priority`)."""
    return PLAN.priority(w.experiment, w.variant)


wildcard_constraints:
    slide=SLIDE_ID.pattern.strip("^$"),
    batch=r"(labelled|unlabelled)-[0-9]+",
    experiment=one_of(EXPERIMENTS),
    variant=one_of({v for variants in EXPERIMENTS.values() for v in variants}),
    seed=r"\d+",
