# Feature stage. Batch jobs encode many slides each (the encoder built once, the next slide's
# tiles read while the current one encodes) or import their precomputed CLAM/TRIDENT files
# (sample-sheet rows with `features`, grid-snapped) into a hidden store; a local per-slide rule
# links each slide's features file into place (see "Batch jobs" in common.smk). Then the
# cohort's QC summary, the one register of excluded slides (it waits for every slide).


rule extract:
    input:
        slides=lambda w: [SAMPLES[s].path for s in BATCHES["patch"][w.batch]],
        patches=lambda w: [f"{RESULTS}/patches/{s}.h5" for s in BATCHES["patch"][w.batch]],
    output:
        update(f"{MANIFESTS['extract']}/{{batch}}.tsv"),
    params:
        ids=batch_slides("patch"),
        store=STORES["features"],
        options=cli_options(
            config["features"], EncoderSettings, ExtractSettings, skip=RUNTIME_KEYS["features"]
        ),
    threads: config["features"]["threads"]
    log:
        f"{RESULTS}/logs/extract/{{batch}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/extract/{{batch}}.tsv"
    resources:
        mem_mb=8000,
        runtime=batch_runtime(15, "patch"),
        span_runtime=RUNTIME["extract"],
    conda:
        "../../envs/features.yaml"
    shell:
        "python -m span --log {log} extract-batch --slide-ids {params.ids}"
        " --slides {input.slides:q} --patches {input.patches} --store {params.store}"
        " --manifest {output} --threads {threads} {params.options} {resources.span_runtime}"


rule import_features:
    input:
        lambda w: [SAMPLES[s].features for s in BATCHES["import_features"][w.batch]],
    output:
        update(f"{MANIFESTS['import_features']}/{{batch}}.tsv"),
    params:
        ids=batch_slides("import_features"),
        store=STORES["features"],
        options=cli_options(config["features"], ImportSettings),
    log:
        f"{RESULTS}/logs/import_features/{{batch}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/import_features/{{batch}}.tsv"
    resources:
        mem_mb=4000,
        runtime=batch_runtime(1, "import_features"),
        span_runtime=RUNTIME["batch"],
    conda:
        "../../envs/features.yaml"
    shell:
        "python -m span --log {log} import-batch --slide-ids {params.ids} --features {input:q}"
        " --store {params.store} --manifest {output} {params.options} {resources.span_runtime}"


rule link_features:
    input:
        unpack(features_source),
    output:
        f"{FEATURES_DIR}/{{slide}}.h5",
    log:
        f"{RESULTS}/logs/link_features/{{slide}}.log",
    params:
        options=lambda w: (
            cli_options(config["features"], EncoderSettings, ExtractSettings,
                        skip=RUNTIME_KEYS["features"])
            if SAMPLES[w.slide].needs_patching
            else cli_options(config["features"], ImportSettings)
        ),
        stored=f"{STORES['features']}/{{slide}}.h5",
    localrule: True
    shell:
        link_shell(("{params.stored:q}", "{output:q}"))


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
