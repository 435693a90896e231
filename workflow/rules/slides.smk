# Slide stage: tissue segmentation and grid-aligned patching. Batch jobs patch many slides
# each into a hidden store; a local per-slide rule links each slide's patch file and QC image
# into place (see "Batch jobs" in common.smk).


rule patch:
    input:
        slides=lambda w: [SAMPLES[s].path for s in BATCHES["patch"][w.batch]],
    output:
        update(f"{MANIFESTS['patch']}/{{batch}}.tsv"),
    params:
        ids=batch_slides("patch"),
        store=STORES["patches"],
        options=cli_options(config["patching"], PatchSettings),
    log:
        f"{RESULTS}/logs/patch/{{batch}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/patch/{{batch}}.tsv"
    resources:
        mem_mb=2000,
        runtime=batch_runtime(2, "patch"),
        span_runtime=RUNTIME["batch"],
    conda:
        "../../envs/slides.yaml"
    shell:
        "python -m span --log {log} patch-batch --slide-ids {params.ids} --slides {input.slides:q}"
        " --store {params.store} --manifest {output} {params.options} {resources.span_runtime}"


rule link_patches:
    input:
        manifest=lambda w: manifest_of("patch", w.slide),
        slide=lambda w: SAMPLES[w.slide].path,
    output:
        h5=f"{RESULTS}/patches/{{slide}}.h5",
        qc=report(f"{RESULTS}/qc/{{slide}}.png", caption="../report/qc.rst", category="Slides",
                  subcategory="QC thumbnails", labels={"slide": "{slide}"}),
    log:
        f"{RESULTS}/logs/link_patches/{{slide}}.log",
    params:
        options=cli_options(config["patching"], PatchSettings),
        h5=f"{STORES['patches']}/{{slide}}.h5",
        qc=f"{STORES['patches']}/{{slide}}.png",
    localrule: True
    shell:
        link_shell(("{params.h5:q}", "{output.h5:q}"), ("{params.qc:q}", "{output.qc:q}"))
