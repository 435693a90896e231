# The synthetic demo cohort: batch jobs render the sheet's resources/demo/slides/<slide>.tiff
# slides (the row's label decides how its tumour cells are arranged) into a hidden store, and a
# local per-slide rule links each into place (docs/architecture.md, "Batch jobs").


if config["demo"]["generate"]:

    rule demo_slides:
        output:
            update(LAYOUT.manifest("demo_slides")),
        log:
            LAYOUT.log("demo_slides", "{batch}"),
        benchmark:
            LAYOUT.benchmark("demo_slides", "{batch}")
        conda:
            "../../envs/slides.yaml"
        resources:
            mem_mb=1500,
            runtime=batch_runtime(1, "demo_slides"),
        params:
            ids=batch_slides("demo_slides"),
            labels=lambda w: [SAMPLES[s].label for s in BATCHES["demo_slides"][w.batch]],
            options=PLAN.demo_options,
            store=LAYOUT.store("demo"),
        shell:
            "python -m span --log {log} demo-batch --slide-ids {params.ids}"
            " --labels {params.labels} {params.options} --store {params.store}"
            " --manifest {output}"

    rule link_demo_slide:
        input:
            manifest=lambda w: manifest_of("demo_slides", w.slide),
        output:
            slide=LAYOUT.demo_slide(),
            truth=LAYOUT.demo_truth(),
        log:
            LAYOUT.log("link_demo_slide", "{slide}"),
        localrule: True
        params:
            label=lambda w: SAMPLES[w.slide].label,
            options=PLAN.demo_options,
            stored=f"{LAYOUT.store('demo')}/{{slide}}",
        shell:
            link_shell(
                ("{params.stored:q}.tiff", "{output.slide:q}"),
                ("{params.stored:q}.truth.png", "{output.truth:q}"),
            )
