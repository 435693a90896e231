"""The workflow's plan: from a checked config and sample sheet, everything the rules need that is
not Snakemake itself (the targets, the batches, the command-line words of each job, the
experiments) in one object with plain methods, so that it is unit-tested without running
Snakemake. `workflow/rules/common.smk` builds it once and binds its methods to wildcards.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from span import outputs as files
from span.data.samplesheet import Sample
from span.models.registry import MODELS
from span.outputs import Layout
from span.plan.cohort import Cohort, split_key, split_plan
from span.plan.config import check_names, resolve_encoder
from span.plan.experiments import Variant, model_checks, parse_experiments, sweep_parameter
from span.settings.options import cli_options, declared
from span.settings.stages import (
    DemoSettings,
    EncoderSettings,
    ExclusionSettings,
    ExtractSettings,
    ImportSettings,
    JobSettings,
    PatchSettings,
    PredictSettings,
    SplitSettings,
    TrainSettings,
)

#: The settings classes whose speed-only options each kind of job takes at run time.
RUNTIME_SETTINGS = {
    "batch": (("jobs", JobSettings),),
    "extract": (("features", ExtractSettings), ("jobs", JobSettings)),
    "train": (("training", TrainSettings),),
}


def speed_only(settings: type) -> tuple[str, ...]:
    """The options of a settings class that change speed, never results."""
    return tuple(d.name for d in declared(settings) if d.option.speed_only)


@dataclass
class WorkflowPlan:
    """The plan of one run: the config (validated by its schema), the cohort, the paths."""

    config: dict
    cohort: Cohort
    layout: Layout
    experiments: dict[str, dict[str, Variant]]
    run_experiments: list[str]
    sweeps: dict[str, str]

    @classmethod
    def from_config(cls, config: dict, samples: Mapping[str, Sample]) -> WorkflowPlan:
        """Check what the schema cannot (encoder, experiments, names) and plan the run. Fills
        in `features.layer` when null (the encoder's published output)."""
        config["features"]["layer"] = resolve_encoder(config["features"])
        features = config["features"]
        experiments = parse_experiments(config["experiments"], config["recipe"])
        return cls(
            config=config,
            cohort=Cohort(samples, config["demo"]["generate"], config["jobs"]["slides_per_job"]),
            layout=Layout(config["cohort"], f"{features['encoder']}-{features['layer']}"),
            experiments=experiments,
            run_experiments=check_names(config, experiments),
            sweeps={n: k for n, v in experiments.items() if (k := sweep_parameter(v))},
        )

    # --- what runs

    def targets(self) -> list[str]:
        """The default target's files: every slide's QC image and features, the QC summary,
        and each experiment's report, sweep plot and variants' predictions."""
        lay = self.layout
        out = [lay.qc_summary]
        out += [lay.qc_image(s) for s in self.cohort.patched]
        out += [lay.features(s) for s in self.cohort.ids]
        for name in self.run_experiments:
            out.append(lay.experiment(name, files.REPORT_MD))
            if name in self.sweeps:
                out.append(lay.experiment(name, files.SWEEP_PNG))
            out += [lay.variant(name, v, files.PREDICTIONS_CSV) for v in self.experiments[name]]
        return out

    def variant(self, experiment: str, variant: str) -> Variant:
        return self.experiments[experiment][variant]

    @property
    def seeds(self) -> list[int]:
        return list(self.config["seeds"])

    @property
    def split_protocol(self) -> str:
        return self.config["splits"]["protocol"]

    @property
    def split_key(self) -> str:
        return split_key(self.cohort.samples, self.split_protocol)

    def splits_file(self, seed: int | str) -> str:
        """The splits a training seed reads: the one split (fixed) or its own (per_seed)."""
        if self.split_protocol == "per_seed":
            return self.layout.seed_splits(seed)
        return self.layout.splits

    @property
    def split_plan(self) -> str:
        cfg = self.config
        return split_plan(
            self.cohort.samples,
            cfg["classes"],
            cfg["splits"],
            cfg["features"]["max_bad_tile_share"],
        )

    def draws_heatmaps(self, variant: str) -> bool:
        return variant in self.config["predict"]["heatmaps"]

    def priority(self, experiment: str, variant: str) -> int:
        """Priority of a variant's training and prediction jobs: the longest-training models
        first, so that the short ones fill the cores at the end (the registry's costs), and a
        variant with heatmaps before others of its cost (its prediction job is the longest)."""
        cost = MODELS[self.variant(experiment, variant).model].cost
        return 2 * cost + self.draws_heatmaps(variant)

    # --- command-line words of the jobs (each flag from its settings class: cli_options)

    def options(self, section: str, *settings: type) -> str:
        """A config section's result-changing options as flags."""
        skip = {k for s in settings for k in speed_only(s)}
        return cli_options(self.config[section], *settings, skip=skip)

    def runtime(self, kind: str) -> str:
        """The speed-only flags of a kind of job (`batch`, `extract`, `train`; threads go by
        Snakemake's `threads:`): a string resource, not a param, so editing them re-runs
        nothing."""
        words = []
        for section, settings in RUNTIME_SETTINGS[kind]:
            speed = {k: self.config[section][k] for k in speed_only(settings) if k != "threads"}
            words.append(cli_options(speed, settings))
        return " ".join(w for w in words if w)

    @property
    def patch_options(self) -> str:
        return self.options("patching", PatchSettings)

    @property
    def extract_options(self) -> str:
        return self.options("features", EncoderSettings, ExtractSettings)

    @property
    def import_options(self) -> str:
        return self.options("features", ImportSettings)

    @property
    def split_options(self) -> str:
        return f"{self.options('splits', SplitSettings)} {self.exclusion_options}"

    def seed_split_options(self, seed: int | str) -> str:
        """`span split`'s options for one training seed's own split (per_seed)."""
        return f"{self.split_options} --training-seed {seed}"

    @property
    def evaluate_options(self) -> str:
        """`span evaluate`'s protocol flag: whether the seeds share one test set."""
        return cli_options({"protocol": self.split_protocol}, SplitSettings)

    @property
    def exclusion_options(self) -> str:
        return self.options("features", ExclusionSettings)

    @property
    def demo_options(self) -> str:
        return self.options("demo", DemoSettings)

    @property
    def predict_options(self) -> str:
        return self.options("predict", PredictSettings)

    def train_options(self, experiment: str, variant: str) -> str:
        """`span train`'s options: the training section with the variant's own overrides."""
        merged = {**self.config["training"], **self.variant(experiment, variant).training}
        return cli_options(merged, TrainSettings, skip=speed_only(TrainSettings))

    def teacher_files(self, experiment: str, variant: str, seed: int | str) -> dict[str, str]:
        """The same-seed checkpoint and metrics of the variant's teacher (MHIM), if any."""
        teacher = self.variant(experiment, variant).teacher
        if not teacher:
            return {}
        return {
            "teacher": self.layout.run(experiment, teacher, seed, files.CHECKPOINT),
            "teacher_metrics": self.layout.run(experiment, teacher, seed, files.METRICS_JSON),
        }

    def hparams(self, experiment: str, variant: str, seed: int | str | None = None) -> str:
        """The variant's hyperparameters as quoted JSON; with a seed (training), its teacher's
        checkpoint of that seed included."""
        hparams = dict(self.variant(experiment, variant).hparams)
        if seed is not None and (teacher := self.teacher_files(experiment, variant, seed)):
            hparams["teacher_checkpoint"] = teacher["teacher"]
        return shlex.quote(json.dumps(hparams, sort_keys=True))

    def evaluation_runs(self, experiment: str) -> str:
        """`--run VARIANT DIR...` per variant, in the experiment's order (the first is the
        reference of the p-values)."""
        return " ".join(
            "--run " + " ".join([v, *(self.layout.run(experiment, v, s) for s in self.seeds)])
            for v in self.experiments[experiment]
        )

    def variant_labels(self, experiment: str) -> str:
        """Quoted JSON {variant: label} of the variants that set one (tables and plots)."""
        labels = {n: v.label for n, v in self.experiments[experiment].items() if v.label}
        return shlex.quote(json.dumps(labels, sort_keys=True))

    def sweep_values(self, experiment: str) -> str:
        """Quoted JSON {variant: value of the swept hyperparameter}."""
        key = self.sweeps[experiment]
        values = {n: v.hparams[key] for n, v in self.experiments[experiment].items()}
        return shlex.quote(json.dumps(values, sort_keys=True))

    def model_checks(self) -> str:
        """JSON of every distinct (model, hyperparameters) for `span check --variants`."""
        return json.dumps(model_checks(self.experiments))
