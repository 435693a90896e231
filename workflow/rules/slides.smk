# Slide stage: tissue segmentation and grid-aligned patching, one job per slide, then the
# cohort's QC table (which waits until every slide is patched).


rule patch:
    input:
        slide=lambda w: SAMPLES[w.slide].path,
    output:
        h5=f"{RESULTS}/patches/{{slide}}.h5",
        qc=report(f"{RESULTS}/qc/{{slide}}.png", caption="../report/qc.rst", category="Slides",
                  subcategory="QC thumbnails", labels={"slide": "{slide}"}),
    params:
        options=cli_options(config["patching"]),
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


rule qc_summary:
    input:
        expand(f"{RESULTS}/patches/{{slide}}.h5", slide=PATCHED),
    output:
        f"{RESULTS}/qc/summary.tsv",
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
        "python -m span --log {log} qc-summary --patches {input} --out {output}"
