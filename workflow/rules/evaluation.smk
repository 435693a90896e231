# Evaluation (one job per experiment) and predictions with heatmaps (one job per experiment
# x variant, all seeds); predictions skip the QC summary's excluded slides. Outputs are flagged
# update(): a re-run that fails leaves the previous result in place.


rule evaluate:
    input:
        runs=lambda w: [
            LAYOUT.run(w.experiment, v, s, name)
            for v in EXPERIMENTS[w.experiment]
            for s in SEEDS
            for name in (FILES.METRICS_JSON, FILES.TEST_PREDICTIONS_CSV)
        ],
        # Its excluded slides, unlabelled ones included, are listed in the report.
        qc=LAYOUT.qc_summary,
    output:
        update(
            report(
                LAYOUT.experiment(name=FILES.REPORT_MD),
                caption="../report/report.rst",
                category="{experiment}",
                subcategory="Tables",
                labels={"file": FILES.REPORT_MD},
            )
        ),
        table=update(
            report(
                LAYOUT.experiment(name=FILES.RESULTS_CSV),
                caption="../report/results.rst",
                category="{experiment}",
                subcategory="Tables",
                labels={"file": FILES.RESULTS_CSV},
            )
        ),
        markdown=update(LAYOUT.experiment(name=FILES.RESULTS_MD)),
        roc=update(
            report(
                LAYOUT.experiment(name=FILES.ROC_PNG),
                caption="../report/roc.rst",
                category="{experiment}",
                subcategory="Figures",
                labels={"file": FILES.ROC_PNG},
            )
        ),
    log:
        LAYOUT.log("evaluate", "{experiment}"),
    benchmark:
        LAYOUT.benchmark("evaluate", "{experiment}")
    conda:
        "../../envs/training.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        runs=lambda w: PLAN.evaluation_runs(w.experiment),
        classes=config["classes"],
        cohort=config["cohort"],
        # Whether the seeds share one test set (seed averages, DeLong) or each has its own.
        protocol=PLAN.evaluate_options,
        labels=lambda w: PLAN.variant_labels(w.experiment),
        sweep=lambda w: f"--sweep {SWEEPS[w.experiment]}" if w.experiment in SWEEPS else "",
        out=lambda w: LAYOUT.experiment(w.experiment),
    shell:
        "python -m span --log {log} evaluate {params.runs} --experiment {wildcards.experiment}"
        " --cohort {params.cohort} --classes {params.classes} --labels {params.labels}"
        " {params.protocol} {params.sweep} --qc {input.qc} --out {params.out}"


rule sweep_plot:
    input:
        LAYOUT.experiment(name=FILES.RESULTS_CSV),
    output:
        update(
            report(
                LAYOUT.experiment(name=FILES.SWEEP_PNG),
                caption="../report/sweep.rst",
                category="{experiment}",
                subcategory="Figures",
                labels={"file": FILES.SWEEP_PNG},
            )
        ),
    log:
        LAYOUT.log("sweep_plot", "{experiment}"),
    benchmark:
        LAYOUT.benchmark("sweep_plot", "{experiment}")
    wildcard_constraints:
        experiment=one_of(SWEEPS),
    conda:
        "../../envs/training.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        parameter=lambda w: SWEEPS[w.experiment],
        values=lambda w: PLAN.sweep_values(w.experiment),
        labels=lambda w: PLAN.variant_labels(w.experiment),
    shell:
        "python -m span --log {log} sweep-plot --results {input} --parameter {params.parameter}"
        " --values {params.values} --labels {params.labels} --out {output}"


rule predict:
    input:
        checkpoints=lambda w: [
            LAYOUT.run(w.experiment, w.variant, s, name)
            for s in SEEDS
            for name in (FILES.CHECKPOINT, FILES.FEATURE_STATS)
        ],
        # Every slide's features, through the QC summary (which waits for them all).
        qc=LAYOUT.qc_summary,
    output:
        predictions=update(LAYOUT.variant(name=FILES.PREDICTIONS_CSV)),
        heatmaps=update(
            report(
                directory(LAYOUT.variant(name=FILES.HEATMAPS_DIR)),
                patterns=["{slide}.png"],
                caption="../report/heatmap.rst",
                category="{experiment}",
                subcategory="Heatmaps: {variant}",
                labels={"slide": "{slide}"},
            )
        ),
    log:
        LAYOUT.log("predict", "{experiment}/{variant}"),
    benchmark:
        LAYOUT.benchmark("predict", "{experiment}/{variant}")
    priority: priority
    conda:
        TRAINING_ENV
    resources:
        mem_mb=8000,
        runtime=120,
        span_runtime=PLAN.runtime("train"),
    params:
        sheet=config["samples"],
        classes=config["classes"],
        features_dir=LAYOUT.features_dir,
        model=lambda w: PLAN.variant(w.experiment, w.variant).model,
        hparams=lambda w: PLAN.hparams(w.experiment, w.variant),
        runs=lambda w: " ".join(LAYOUT.run(w.experiment, w.variant, s) for s in SEEDS),
        heatmaps=lambda w, output: (
            f"--heatmaps {output.heatmaps}" if PLAN.draws_heatmaps(w.variant) else ""
        ),
        options=PLAN.predict_options,
    shell:
        "mkdir -p {output.heatmaps} && python -m span --log {log} predict"
        " --samples {params.sheet:q} --classes {params.classes}"
        " --features-dir {params.features_dir} --model {params.model} --hparams {params.hparams}"
        " --variant {wildcards.variant} --runs {params.runs} --out {output.predictions}"
        " {params.heatmaps}"
        " {params.options} --qc {input.qc} {resources.span_runtime}"
