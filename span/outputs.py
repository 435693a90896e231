"""Names and places of the files the pipeline writes, declared once: the workflow's rules spell
their outputs with these, and the code, the benchmarks and the tests that write or read each
file join the same names (`Layout`).

Standard library only: the Snakefile imports it at parse time.
"""

from __future__ import annotations

from dataclasses import dataclass

# A training run's folder (`span train`): results/<cohort>/<experiment>/<variant>/seed<N>/
CHECKPOINT = "checkpoint.pt"
FEATURE_STATS = "feature_stats.pt"
HISTORY_CSV = "history.csv"
METRICS_JSON = "metrics.json"
TEST_PREDICTIONS_CSV = "test_predictions.csv"

# A variant's folder (`span predict`, every seed of the variant)
PREDICTIONS_CSV = "predictions.csv"
HEATMAPS_DIR = "heatmaps"

# An experiment's folder (`span evaluate`; `span sweep-plot` for a sweep)
RESULTS_CSV = "results.csv"
RESULTS_PER_SEED_CSV = "results_per_seed.csv"
RESULTS_MD = "results.md"
ROC_PNG = "roc.png"
REPORT_MD = "report.md"
SWEEP_PNG = "sweep.png"


# Where every file of a cohort lives. The methods take names or Snakemake wildcards alike:
# `layout.patches("{slide}")` is a rule's pattern, `layout.patches("s01")` one slide's file.

#: The hidden folder, beside a stage's per-slide files, where its batch jobs keep them.
STORE_DIR = ".store"


@dataclass(frozen=True)
class Layout:
    """The files of one cohort under results/<cohort>/ (and the demo's slides), for the rules,
    the benchmarks and the tests alike."""

    cohort: str
    features_name: str  # <encoder>-<layer>
    results: str = "results"
    demo_dir: str = "resources/demo/slides"

    @property
    def root(self) -> str:
        return f"{self.results}/{self.cohort}"

    def demo_slide(self, slide: str = "{slide}") -> str:
        return f"{self.demo_dir}/{slide}.tiff"

    def demo_truth(self, slide: str = "{slide}") -> str:
        """Where the demo slide's tumour lies (`span.synthetic.truth`), beside the slide."""
        return f"{self.demo_dir}/{slide}.truth.png"

    def patches(self, slide: str = "{slide}") -> str:
        return f"{self.root}/patches/{slide}.h5"

    def qc_image(self, slide: str = "{slide}") -> str:
        return f"{self.root}/qc/{slide}.png"

    @property
    def qc_summary(self) -> str:
        return f"{self.root}/qc/summary.tsv"

    @property
    def features_dir(self) -> str:
        return f"{self.root}/features/{self.features_name}"

    def features(self, slide: str = "{slide}") -> str:
        return f"{self.features_dir}/{slide}.h5"

    @property
    def splits(self) -> str:
        """The one split of every training seed (splits.protocol fixed)."""
        return f"{self.root}/splits.tsv"

    def seed_splits(self, seed: int | str = "{seed}") -> str:
        """A training seed's own split (splits.protocol per_seed)."""
        return f"{self.root}/splits/seed{seed}.tsv"

    def store(self, stage: str) -> str:
        """The hidden store of a stage's batch jobs: `demo`, `patches` or `features`."""
        folder = {
            "demo": self.demo_dir,
            "patches": f"{self.root}/patches",
            "features": self.features_dir,
        }[stage]
        return f"{folder}/{STORE_DIR}"

    def manifest(self, rule: str, batch: str = "{batch}") -> str:
        """The manifest a batch job of `rule` writes."""
        folder = {
            "demo_slides": f"{self.root}/batches/demo_slides",
            "patch": f"{self.root}/batches/patch",
            "extract": f"{self.features_dir}/batches/extract",
            "import_features": f"{self.features_dir}/batches/import",
        }[rule]
        return f"{folder}/{batch}.tsv"

    def experiment(self, experiment: str = "{experiment}", name: str = "") -> str:
        """An experiment's folder, or its file `name` (REPORT_MD, RESULTS_CSV...)."""
        folder = f"{self.root}/{experiment}"
        return f"{folder}/{name}" if name else folder

    def variant(
        self, experiment: str = "{experiment}", variant: str = "{variant}", name: str = ""
    ) -> str:
        """A variant's folder, or its file `name` (PREDICTIONS_CSV, HEATMAPS_DIR)."""
        folder = f"{self.root}/{experiment}/{variant}"
        return f"{folder}/{name}" if name else folder

    def run(
        self,
        experiment: str = "{experiment}",
        variant: str = "{variant}",
        seed: int | str = "{seed}",
        name: str = "",
    ) -> str:
        """A training run's folder, or its file `name` (CHECKPOINT, METRICS_JSON...)."""
        folder = f"{self.root}/{experiment}/{variant}/seed{seed}"
        return f"{folder}/{name}" if name else folder

    def log(self, rule: str, job: str = "") -> str:
        """A job's log: logs/<rule>/<job>.log, or logs/<rule>.log for a cohort-level job."""
        return f"{self.root}/logs/{rule}/{job}.log" if job else f"{self.root}/logs/{rule}.log"

    def benchmark(self, rule: str, job: str = "") -> str:
        """A job's run-time record, beside its log's name under benchmarks/."""
        return (
            self.log(rule, job).replace("/logs/", "/benchmarks/", 1).removesuffix(".log") + ".tsv"
        )
