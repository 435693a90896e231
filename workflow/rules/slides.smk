# Slide stage: tissue segmentation and grid-aligned patching. Batch jobs patch many slides
# each into a hidden store; a local per-slide rule links each slide's patch file and QC image
# into place (docs/architecture.md, "Batch jobs").


rule patch:
    input:
        slides=lambda w: [SAMPLES[s].path for s in BATCHES["patch"][w.batch]],
    output:
        update(LAYOUT.manifest("patch")),
    log:
        LAYOUT.log("patch", "{batch}"),
    benchmark:
        LAYOUT.benchmark("patch", "{batch}")
    conda:
        "../../envs/slides.yaml"
    resources:
        mem_mb=2000,
        runtime=batch_runtime(2, "patch"),
        span_runtime=PLAN.runtime("batch"),
    params:
        ids=batch_slides("patch"),
        store=LAYOUT.store("patches"),
        options=PLAN.patch_options,
    shell:
        "python -m span --log {log} patch-batch --slide-ids {params.ids} --slides {input.slides:q}"
        " --store {params.store} --manifest {output} {params.options} {resources.span_runtime}"


rule link_patches:
    input:
        manifest=lambda w: manifest_of("patch", w.slide),
        slide=lambda w: SAMPLES[w.slide].path,
    output:
        h5=LAYOUT.patches(),
        qc=report(
            LAYOUT.qc_image(),
            caption="../report/qc.rst",
            category="Slides",
            subcategory="QC thumbnails",
            labels={"slide": "{slide}"},
        ),
    log:
        LAYOUT.log("link_patches", "{slide}"),
    localrule: True
    params:
        options=PLAN.patch_options,
        h5=f"{LAYOUT.store('patches')}/{{slide}}.h5",
        qc=f"{LAYOUT.store('patches')}/{{slide}}.png",
    shell:
        link_shell(("{params.h5:q}", "{output.h5:q}"), ("{params.qc:q}", "{output.qc:q}"))
