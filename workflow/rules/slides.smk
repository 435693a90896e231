# Slide stage: tissue segmentation and grid-aligned patching, one job per slide. Outputs are
# flagged update(): a re-run that fails leaves the previous result in place.


rule patch:
    input:
        slide=lambda w: SAMPLES[w.slide].path,
    output:
        h5=update(f"{RESULTS}/patches/{{slide}}.h5"),
        qc=update(report(f"{RESULTS}/qc/{{slide}}.png", caption="../report/qc.rst", category="Slides",
                  subcategory="QC thumbnails", labels={"slide": "{slide}"})),
    params:
        options=cli_options(config["patching"], PatchSettings),
    log:
        f"{RESULTS}/logs/patch/{{slide}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/patch/{{slide}}.tsv"
    resources:
        mem_mb=2000,
        runtime=20,
    conda:
        "../../envs/slides.yaml"
    shell:
        "python -m span --log {log} patch --slide {input.slide:q} --slide-id {wildcards.slide}"
        " --out {output.h5} --qc {output.qc} {params.options}"

