# Feature stage. Batch jobs encode many slides each (the encoder built once, the next slide's
# tiles read while the current one encodes) or import their precomputed CLAM/TRIDENT files
# (sample-sheet rows with `features`, grid-snapped) into a hidden store; a local per-slide rule
# links each slide's features file into place (docs/architecture.md, "Batch jobs"). Then the
# cohort's QC summary, the one register of excluded slides (it waits for every slide).


rule extract:
    input:
        slides=lambda w: [SAMPLES[s].path for s in BATCHES["patch"][w.batch]],
        patches=lambda w: [LAYOUT.patches(s) for s in BATCHES["patch"][w.batch]],
    output:
        update(LAYOUT.manifest("extract")),
    log:
        LAYOUT.log("extract", "{batch}"),
    benchmark:
        LAYOUT.benchmark("extract", "{batch}")
    conda:
        "../../envs/features.yaml"
    threads: config["features"]["threads"]
    resources:
        mem_mb=8000,
        runtime=batch_runtime(15, "patch"),
        span_runtime=PLAN.runtime("extract"),
    params:
        ids=batch_slides("patch"),
        store=LAYOUT.store("features"),
        options=PLAN.extract_options,
    shell:
        "python -m span --log {log} extract-batch --slide-ids {params.ids}"
        " --slides {input.slides:q} --patches {input.patches} --store {params.store}"
        " --manifest {output} --threads {threads} {params.options} {resources.span_runtime}"


rule import_features:
    input:
        lambda w: [SAMPLES[s].features for s in BATCHES["import_features"][w.batch]],
    output:
        update(LAYOUT.manifest("import_features")),
    log:
        LAYOUT.log("import_features", "{batch}"),
    benchmark:
        LAYOUT.benchmark("import_features", "{batch}")
    conda:
        "../../envs/features.yaml"
    resources:
        mem_mb=4000,
        runtime=batch_runtime(1, "import_features"),
        span_runtime=PLAN.runtime("batch"),
    params:
        ids=batch_slides("import_features"),
        store=LAYOUT.store("features"),
        options=PLAN.import_options,
    shell:
        "python -m span --log {log} import-batch --slide-ids {params.ids} --features {input:q}"
        " --store {params.store} --manifest {output} {params.options} {resources.span_runtime}"


rule link_features:
    input:
        unpack(features_source),
    output:
        LAYOUT.features(),
    log:
        LAYOUT.log("link_features", "{slide}"),
    localrule: True
    params:
        options=lambda w: (
            PLAN.extract_options if SAMPLES[w.slide].needs_patching else PLAN.import_options
        ),
        stored=f"{LAYOUT.store('features')}/{{slide}}.h5",
    shell:
        link_shell(("{params.stored:q}", "{output:q}"))


rule qc_summary:
    input:
        [LAYOUT.features(s) for s in PLAN.cohort.ids],
    output:
        update(LAYOUT.qc_summary),
    log:
        LAYOUT.log("qc_summary"),
    benchmark:
        LAYOUT.benchmark("qc_summary")
    conda:
        "../../envs/slides.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        options=PLAN.exclusion_options,
    shell:
        "python -m span --log {log} qc-summary --features {input} {params.options} --out {output}"
