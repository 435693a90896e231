"""Names of the files the pipeline writes, declared once: the workflow's rules spell their
outputs with these, and the code that writes or reads each file joins the same names.

Standard library only: the Snakefile imports it at parse time.
"""

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
