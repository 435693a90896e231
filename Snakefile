# span-wsi: raw whole-slide images -> tissue patches -> features -> SPAN and MIL baselines.
# Run `snakemake --cores all` (settings from profiles/default); see README.md.

import shutil
from pathlib import Path

from snakemake.io import IOFile
from snakemake.utils import min_version

from span.run_lock import end_run, explain_lock_errors, record_run

min_version("9.0")
explain_lock_errors()  # a second run on this folder: one line, alive or killed


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/slides.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/training.smk"
include: "workflow/rules/evaluation.smk"


rule all:
    default_target: True
    input:
        PLAN.targets(),


onstart:
    # Backups of update() outputs left by a run that was killed mid-job: the job re-runs anyway
    # (incomplete), and a stale backup of a folder would make Snakemake's next backup fail.
    shutil.rmtree(Path(workflow.persistence.path, "backups"), ignore_errors=True)
    record_run(workflow.persistence.path)


onsuccess:
    from span.run_summary import exclusion_summary

    end_run(workflow.persistence.path)
    if summary := exclusion_summary(LAYOUT.qc_summary):
        print(summary, file=sys.stderr)


onerror:
    from span.run_summary import exclusion_summary, failure_summary, outdate_restored

    end_run(workflow.persistence.path)
    for summary in (exclusion_summary(LAYOUT.qc_summary), failure_summary(log)):
        if summary:
            print(summary, file=sys.stderr)
    if kept := outdate_restored(log):
        for path in kept:
            workflow.persistence.cleanup_metadata(IOFile(path))
        print(
            f"{len(kept)} earlier result(s) kept in place of the failed jobs' (dated 1970 "
            "so that the next run redoes those jobs)",
            file=sys.stderr,
        )
