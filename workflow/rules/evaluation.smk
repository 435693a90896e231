# Evaluation (one job per experiment) and predictions with heatmaps (one job per experiment
# x variant, all seeds); predictions skip the QC summary's excluded slides. Outputs are flagged
# update(): a re-run that fails leaves the previous result in place.


rule evaluate:
    input:
        lambda w: expand(
            f"{RESULTS}/{w.experiment}/{{variant}}/seed{{seed}}/{{name}}",
            variant=EXPERIMENTS[w.experiment], seed=SEEDS,
            name=[FILES.METRICS_JSON, FILES.TEST_PREDICTIONS_CSV],
        ),
    output:
        update(report(f"{RESULTS}/{{experiment}}/{FILES.REPORT_MD}", caption="../report/report.rst",
                      category="{experiment}", subcategory="Tables",
                      labels={"file": FILES.REPORT_MD})),
        table=update(report(f"{RESULTS}/{{experiment}}/{FILES.RESULTS_CSV}",
                            caption="../report/results.rst", category="{experiment}",
                            subcategory="Tables", labels={"file": FILES.RESULTS_CSV})),
        markdown=update(f"{RESULTS}/{{experiment}}/{FILES.RESULTS_MD}"),
        roc=update(report(f"{RESULTS}/{{experiment}}/{FILES.ROC_PNG}", caption="../report/roc.rst",
                          category="{experiment}", subcategory="Figures",
                          labels={"file": FILES.ROC_PNG})),
    params:
        runs=evaluation_runs,
        classes=config["classes"],
        cohort=COHORT,
        labels=variant_labels,
        sweep=lambda w: f"--sweep {SWEEPS[w.experiment]}" if w.experiment in SWEEPS else "",
        out=lambda w: f"{RESULTS}/{w.experiment}",
    log:
        f"{RESULTS}/logs/evaluate/{{experiment}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{experiment}}.tsv"
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/training.yaml"
    shell:
        "python -m span --log {log} evaluate {params.runs} --experiment {wildcards.experiment}"
        " --cohort {params.cohort} --classes {params.classes} --labels {params.labels}"
        " {params.sweep} --out {params.out}"


rule sweep_plot:
    input:
        f"{RESULTS}/{{experiment}}/{FILES.RESULTS_CSV}",
    output:
        update(report(f"{RESULTS}/{{experiment}}/{FILES.SWEEP_PNG}", caption="../report/sweep.rst",
                      category="{experiment}", subcategory="Figures",
                      labels={"file": FILES.SWEEP_PNG})),
    params:
        parameter=lambda w: SWEEPS[w.experiment],
        values=sweep_values,
        labels=variant_labels,
    wildcard_constraints:
        experiment=one_of(SWEEPS),
    log:
        f"{RESULTS}/logs/sweep_plot/{{experiment}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/sweep_plot/{{experiment}}.tsv"
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/training.yaml"
    shell:
        "python -m span --log {log} sweep-plot --results {input} --parameter {params.parameter}"
        " --values {params.values} --labels {params.labels} --out {output}"


rule predict:
    input:
        checkpoints=lambda w: expand(
            f"{RESULTS}/{w.experiment}/{w.variant}/seed{{seed}}/{{name}}",
            seed=SEEDS, name=[FILES.CHECKPOINT, FILES.FEATURE_STATS],
        ),
        # Every slide's features, through the QC summary (which waits for them all).
        qc=f"{RESULTS}/qc/summary.tsv",
    output:
        predictions=update(f"{RESULTS}/{{experiment}}/{{variant}}/{FILES.PREDICTIONS_CSV}"),
        heatmaps=update(
            report(
                directory(f"{RESULTS}/{{experiment}}/{{variant}}/{FILES.HEATMAPS_DIR}"),
                patterns=["{slide}.png"],
                caption="../report/heatmap.rst",
                category="{experiment}",
                subcategory="Heatmaps: {variant}",
                labels={"slide": "{slide}"},
            )
        ),
    params:
        sheet=config["samples"],
        classes=config["classes"],
        features_dir=FEATURES_DIR,
        model=lambda w: EXPERIMENTS[w.experiment][w.variant]["model"],
        hparams=lambda w: shlex.quote(
            json.dumps(EXPERIMENTS[w.experiment][w.variant]["hparams"], sort_keys=True)
        ),
        runs=lambda w: " ".join(run_dir(w.experiment, w.variant, s) for s in SEEDS),
        heatmaps=lambda w, output: f"--heatmaps {output.heatmaps}" if draws_heatmaps(w) else "",
        max_side=config["predict"]["heatmap_max_side"],
    priority: heatmaps_first
    log:
        f"{RESULTS}/logs/predict/{{experiment}}/{{variant}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict/{{experiment}}/{{variant}}.tsv"
    resources:
        mem_mb=8000,
        runtime=120,
        span_runtime=RUNTIME["train"],
    conda:
        TRAINING_ENV
    shell:
        "mkdir -p {output.heatmaps} && python -m span --log {log} predict"
        " --samples {params.sheet:q} --classes {params.classes}"
        " --features-dir {params.features_dir} --model {params.model} --hparams {params.hparams}"
        " --runs {params.runs} --out {output.predictions} {params.heatmaps}"
        " --heatmap-max-side {params.max_side} --qc {input.qc} {resources.span_runtime}"
