# The synthetic demo cohort: batch jobs render the sheet's resources/demo/slides/<slide>.tiff
# slides (the row's label decides how its tumour cells are arranged) into a hidden store, and a
# local per-slide rule links each into place (see "Batch jobs" in common.smk).


if config["demo"]["generate"]:

    rule demo_slides:
        output:
            update(f"{MANIFESTS['demo_slides']}/{{batch}}.tsv"),
        params:
            ids=batch_slides("demo_slides"),
            labels=lambda w: [SAMPLES[s].label for s in BATCHES["demo_slides"][w.batch]],
            seed=config["demo"]["seed"],
            store=STORES["demo"],
        log:
            f"{RESULTS}/logs/demo_slides/{{batch}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/demo_slides/{{batch}}.tsv"
        resources:
            mem_mb=1500,
            runtime=batch_runtime(1, "demo_slides"),
        conda:
            "../../envs/slides.yaml"
        shell:
            "python -m span --log {log} demo-batch --slide-ids {params.ids}"
            " --labels {params.labels} --seed {params.seed} --store {params.store}"
            " --manifest {output}"

    rule link_demo_slide:
        input:
            manifest=lambda w: manifest_of("demo_slides", w.slide),
        output:
            f"{DEMO_DIR}/{{slide}}.tiff",
        log:
            f"{RESULTS}/logs/link_demo_slide/{{slide}}.log",
        params:
            label=lambda w: SAMPLES[w.slide].label,
            seed=config["demo"]["seed"],
            stored=f"{STORES['demo']}/{{slide}}.tiff",
        localrule: True
        shell:
            link_shell(("{params.stored:q}", "{output:q}"))
