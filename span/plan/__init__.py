"""The workflow's planning, torch-free and unit-tested: the config checked whole (`config`),
the experiments and their variants (`experiments`), the cohort's slide sets, batches and split
plan (`cohort`). The Snakefile (`workflow/rules/common.smk`) only glues them to Snakemake; the
paths every stage writes are `span.outputs.Layout`'s.

Standard library only: the Snakefile imports it at parse time.
"""
