# Splits (one job per cohort; splits.protocol per_seed: one per training seed) and training
# (one job per experiment x variant x seed). Outputs are flagged update(): a re-run that fails
# leaves the previous result in place.


rule split:
    input:
        # Which labelled slides the QC rule excludes (unlabelled ones are never waited for).
        features=[LAYOUT.features(s) for s in PLAN.cohort.labelled],
    output:
        update(LAYOUT.splits),
    log:
        LAYOUT.log("split"),
    benchmark:
        LAYOUT.benchmark("split")
    conda:
        "../../envs/training.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        # The split depends on the labelled rows' slide_id, patient, label and split and on
        # the excluded slides only: editing paths or other config does not re-split.
        sheet=config["samples"],
        rows=PLAN.split_key,
        classes=config["classes"],
        options=PLAN.split_options,
    shell:
        "python -m span --log {log} split --samples {params.sheet:q} --classes {params.classes}"
        " --features {input.features} {params.options} --out {output}"


# splits.protocol per_seed: each training seed's own split (adding a seed splits only it).
use rule split as split_per_seed with:
    output:
        update(LAYOUT.seed_splits()),
    log:
        LAYOUT.log("split_per_seed", "seed{seed}"),
    benchmark:
        LAYOUT.benchmark("split_per_seed", "seed{seed}")
    params:
        options=lambda w: PLAN.seed_split_options(w.seed),


rule train:
    input:
        unpack(lambda w: PLAN.teacher_files(w.experiment, w.variant, w.seed)),
        # The features it reads come through the splits: the split job waits for (and re-runs
        # with) every labelled slide's features; listing 10,000 files here per training job
        # made planning a large cohort slow. The seed's own split under per_seed.
        splits=lambda w: PLAN.splits_file(w.seed),
    output:
        checkpoint=update(LAYOUT.run(name=FILES.CHECKPOINT)),
        stats=update(LAYOUT.run(name=FILES.FEATURE_STATS)),
        history=update(LAYOUT.run(name=FILES.HISTORY_CSV)),
        metrics=update(LAYOUT.run(name=FILES.METRICS_JSON)),
        predictions=update(LAYOUT.run(name=FILES.TEST_PREDICTIONS_CSV)),
    log:
        LAYOUT.log("train", "{experiment}/{variant}/seed{seed}"),
    benchmark:
        LAYOUT.benchmark("train", "{experiment}/{variant}/seed{seed}")
    priority: priority
    conda:
        TRAINING_ENV
    threads: config["training"]["threads"]
    resources:
        mem_mb=16000,
        runtime=720,
        span_runtime=PLAN.runtime("train"),
    params:
        split_plan=PLAN.split_plan,
        model=lambda w: PLAN.variant(w.experiment, w.variant).model,
        classes=config["classes"],
        options=lambda w: PLAN.train_options(w.experiment, w.variant),
        features_dir=LAYOUT.features_dir,
        teacher_runtime=lambda w, input: (
            f"--add-runtime-of {input.teacher_metrics}" if "teacher" in input.keys() else ""
        ),
        # A function of the wildcards only: Snakemake leaves params derived from `input` out
        # of its re-run check, and a changed hyperparameter must retrain.
        hparams=lambda w: PLAN.hparams(w.experiment, w.variant, w.seed),
        out=lambda w: LAYOUT.run(w.experiment, w.variant, w.seed),
    shell:
        "python -m span --log {log} train --splits {input.splits}"
        " --features-dir {params.features_dir} --classes {params.classes}"
        " --model {params.model} --variant {wildcards.variant} --hparams {params.hparams}"
        " --seed {wildcards.seed} --threads {threads} {params.options} {resources.span_runtime}"
        " {params.teacher_runtime}"
        " --out {params.out}"
