# Feature stage: one job per slide. Slides with a precomputed `features` file in the sample
# sheet are imported (grid-snapped) instead of patched and extracted.


rule extract:
    input:
        slide=lambda w: SAMPLES[w.slide].path,
        patches=f"{RESULTS}/patches/{{slide}}.h5",
    output:
        f"{FEATURES_DIR}/{{slide}}.h5",
    params:
        options=cli_options(config["features"], skip=("threads", "import_patch_size_level0")),
    wildcard_constraints:
        slide=one_of(PATCHED),
    threads: config["features"]["threads"]
    log:
        f"{RESULTS}/logs/extract/{{slide}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/extract/{{slide}}.tsv"
    resources:
        mem_mb=8000,
        runtime=240,
    conda:
        "../../envs/features.yaml"
    shell:
        "python -m span --log {log} extract --slide {input.slide:q} --patches {input.patches}"
        " --out {output} --threads {threads} {params.options}"


rule import_features:
    input:
        lambda w: SAMPLES[w.slide].features,
    output:
        f"{FEATURES_DIR}/{{slide}}.h5",
    params:
        options=cli_options(
            {"patch_size_level0": config["features"]["import_patch_size_level0"]}
        ),
    wildcard_constraints:
        slide=one_of(IMPORTED),
    log:
        f"{RESULTS}/logs/import_features/{{slide}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/import_features/{{slide}}.tsv"
    resources:
        mem_mb=4000,
        runtime=20,
    conda:
        "../../envs/features.yaml"
    shell:
        "python -m span --log {log} import-features --features {input:q}"
        " --slide-id {wildcards.slide} --out {output} {params.options}"
