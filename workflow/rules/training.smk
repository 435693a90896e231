# Splits (one job per cohort) and training (one job per experiment x variant x seed). Outputs
# are flagged update(): a re-run that fails leaves the previous result in place.


rule split:
    input:
        # Which labelled slides the QC rule excludes (unlabelled ones are never waited for).
        features=expand(f"{FEATURES_DIR}/{{slide}}.h5", slide=LABELLED),
    output:
        update(f"{RESULTS}/splits.tsv"),
    params:
        # The split depends on the labelled rows' slide_id, patient, label and split and on
        # the excluded slides only: editing paths or other config does not re-split.
        sheet=config["samples"],
        max_bad_tile_share=config["features"]["max_bad_tile_share"],
        rows=SPLIT_KEY,
        classes=config["classes"],
        options=cli_options(config["splits"], SplitSettings),
    log:
        f"{RESULTS}/logs/split.log",
    benchmark:
        f"{RESULTS}/benchmarks/split.tsv"
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/training.yaml"
    shell:
        "python -m span --log {log} split --samples {params.sheet:q} --classes {params.classes}"
        " --features {input.features} --max-bad-tile-share {params.max_bad_tile_share}"
        " {params.options} --out {output}"


rule train:
    input:
        unpack(teacher_inputs),
        # The features it reads come through the splits: the split job waits for (and re-runs
        # with) every labelled slide's features; listing 10,000 files here per training job
        # made planning a large cohort slow.
        splits=f"{RESULTS}/splits.tsv",
    output:
        checkpoint=update(f"{RESULTS}/{{experiment}}/{{variant}}/seed{{seed}}/{FILES.CHECKPOINT}"),
        stats=update(f"{RESULTS}/{{experiment}}/{{variant}}/seed{{seed}}/{FILES.FEATURE_STATS}"),
        history=update(f"{RESULTS}/{{experiment}}/{{variant}}/seed{{seed}}/{FILES.HISTORY_CSV}"),
        metrics=update(f"{RESULTS}/{{experiment}}/{{variant}}/seed{{seed}}/{FILES.METRICS_JSON}"),
        predictions=update(
            f"{RESULTS}/{{experiment}}/{{variant}}/seed{{seed}}/{FILES.TEST_PREDICTIONS_CSV}"
        ),
    params:
        split_plan=SPLIT_PLAN,
        model=lambda w: EXPERIMENTS[w.experiment][w.variant]["model"],
        classes=config["classes"],
        options=train_options,
        features_dir=FEATURES_DIR,
        teacher_runtime=lambda w, input: (
            f"--add-runtime-of {input.teacher_metrics}" if "teacher" in input.keys() else ""
        ),
        hparams=train_hparams,
        out=lambda w: run_dir(w.experiment, w.variant, w.seed),
    threads: config["training"]["threads"]
    priority: heatmaps_first
    log:
        f"{RESULTS}/logs/train/{{experiment}}/{{variant}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{experiment}}/{{variant}}/seed{{seed}}.tsv"
    resources:
        mem_mb=16000,
        runtime=720,
        span_runtime=RUNTIME["train"],
    conda:
        TRAINING_ENV
    shell:
        "python -m span --log {log} train --splits {input.splits}"
        " --features-dir {params.features_dir} --classes {params.classes}"
        " --model {params.model} --variant {wildcards.variant} --hparams {params.hparams}"
        " --seed {wildcards.seed} --threads {threads} {params.options} {resources.span_runtime}"
        " {params.teacher_runtime}"
        " --out {params.out}"
