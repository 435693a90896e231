# Feature stage: one job per slide. Slides with a precomputed `features` file in the sample
# sheet are imported (grid-snapped) instead of patched and extracted. Then the cohort's QC
# summary, the one register of excluded slides (it waits for every slide's features).


rule extract:
    input:
        slide=lambda w: SAMPLES[w.slide].path,
        patches=f"{RESULTS}/patches/{{slide}}.h5",
    output:
        update(f"{FEATURES_DIR}/{{slide}}.h5"),
    params:
        options=cli_options(
            config["features"], EncoderSettings, ExtractSettings, skip=RUNTIME_KEYS["features"]
        ),
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
        span_runtime=RUNTIME["extract"],
    conda:
        "../../envs/features.yaml"
    shell:
        "python -m span --log {log} extract --slide {input.slide:q} --patches {input.patches}"
        " --out {output} --threads {threads} {params.options} {resources.span_runtime}"


rule import_features:
    input:
        lambda w: SAMPLES[w.slide].features,
    output:
        update(f"{FEATURES_DIR}/{{slide}}.h5"),
    params:
        options=cli_options(config["features"], ImportSettings),
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


rule qc_summary:
    input:
        expand(f"{FEATURES_DIR}/{{slide}}.h5", slide=sorted(SAMPLES)),
    output:
        update(f"{RESULTS}/qc/summary.tsv"),
    params:
        max_bad_tile_share=config["features"]["max_bad_tile_share"],
    log:
        f"{RESULTS}/logs/qc_summary.log",
    benchmark:
        f"{RESULTS}/benchmarks/qc_summary.tsv"
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/slides.yaml"
    shell:
        "python -m span --log {log} qc-summary --features {input}"
        " --max-bad-tile-share {params.max_bad_tile_share} --out {output}"
