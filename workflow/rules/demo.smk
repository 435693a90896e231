# The synthetic demo cohort: one job per slide listed in the sample sheet under
# resources/demo/slides/, its label deciding how its tumour cells are arranged.


if config["demo"]["generate"]:

    rule demo_slide:
        output:
            f"{DEMO_DIR}/{{slide}}.tiff",
        params:
            label=lambda w: SAMPLES[w.slide].label,
            seed=config["demo"]["seed"],
        log:
            f"{RESULTS}/logs/demo_slide/{{slide}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/demo_slide/{{slide}}.tsv"
        resources:
            mem_mb=1500,
            runtime=10,
        conda:
            "../../envs/slides.yaml"
        shell:
            "python -m span --log {log} demo-slide --slide-id {wildcards.slide}"
            " --label {params.label} --seed {params.seed} --out {output}"
