"""The workflow's plan without Snakemake: experiments checked whole, sweeps, the cohort's sets,
batches and split plan, the path layout, and the jobs' command-line words."""

from __future__ import annotations

import copy
import json
import shlex
import subprocess
import sys

import pytest
import yaml

from span import outputs as files
from span.data.samplesheet import Sample
from span.errors import SpanError
from span.outputs import Layout
from span.plan.cohort import Cohort, split_key, split_plan
from span.plan.config import check_names, resolve_encoder
from span.plan.experiments import model_checks, parse_experiment, sweep_parameter
from span.plan.workflow import WorkflowPlan
from tests.workflow_helpers import REPO

CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def samples(*rows) -> dict[str, Sample]:
    """Samples from (id, label[, features]) rows; paths under /data."""
    out = {}
    for sid, label, *features in rows:
        feats = features[0] if features else ""
        out[sid] = Sample(sid, "" if feats else f"/data/{sid}.svs", label, feats)
    return out


def test_the_plan_imports_no_torch():
    code = "import sys, span.plan.workflow; print('torch' in sys.modules)"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "False"


def test_variants_are_parsed_in_order_with_their_defaults():
    variants = parse_experiment(
        "e",
        [
            {"model": "span"},
            {"model": "abmil", "name": "a2", "label": "A2", "hparams": {"hidden": 64}},
            {"model": "mhim", "teacher": "a2", "training": {"epochs": 3, "lr": 1}},
        ],
    )
    assert list(variants) == ["span", "a2", "mhim"]
    assert variants["a2"].label == "A2" and variants["a2"].hparams == {"hidden": 64}
    assert variants["mhim"].teacher == "a2" and variants["mhim"].training == {"epochs": 3, "lr": 1}


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([{"model": "spam"}], "experiments.e.spam: unknown model 'spam'"),
        (
            [{"model": "span"}, {"model": "span"}],
            "experiments.e.span: two variants share this name",
        ),
        (
            [{"model": "span", "training": {"flip": True}}],
            "experiments.e.span.training: no option flip",
        ),
        ([{"model": "span", "training": {"device": "cpu"}}], "training: no option device"),
        ([{"model": "span", "training": {"epochs": 0}}], "training.epochs: 0 is not >= 1"),
        ([{"model": "span", "training": {"epochs": 2.5}}], "training.epochs: 2.5 is not int"),
        ([{"model": "span", "training": {"flips": "yes"}}], "training.flips: 'yes' is not bool"),
        ([{"model": "span", "training": {"patch_drop": 1.0}}], "patch_drop: 1.0 is not < 1"),
        ([{"model": "mhim", "teacher": "abmil"}], "teacher 'abmil' is not a variant of e"),
        ([{"model": "span", "hparams": [1]}], "experiments.e.span.hparams: [1] is not a mapping"),
    ],
)
def test_a_bad_variant_is_one_line_naming_it(entries, message):
    with pytest.raises(SpanError, match="invalid config") as err:
        parse_experiment("e", entries)
    assert message in str(err.value)


def test_sweeps_are_one_numeric_hyperparameter_over_one_model():
    def sweep(*entries):
        return sweep_parameter(parse_experiment("e", list(entries)))

    side = [{"model": "span", "name": f"w{s}", "hparams": {"window_side": s}} for s in (2, 4)]
    assert sweep(*side) == "window_side"
    assert sweep(side[0]) is None  # one variant
    assert sweep(side[0], {**side[1], "model": "abmil", "hparams": {"hidden": 4}}) is None
    assert sweep(side[0], {**side[1], "training": {"epochs": 2}}) is None
    assert sweep(side[0], {**side[1], "hparams": {"window_side": 4, "heads": 4}}) is None
    named = [{"model": "span", "name": n, "hparams": {"head": n}} for n in ("mean", "global")]
    assert sweep(*named) is None  # not numeric


def test_each_model_and_hyperparameters_are_built_once():
    experiments = {
        "a": parse_experiment("a", [{"model": "span"}, {"model": "abmil"}]),
        "b": parse_experiment(
            "b",
            [
                {"model": "span", "name": "x"},
                {"model": "span", "name": "y", "hparams": {"heads": 4}},
            ],
        ),
    }
    checks = model_checks(experiments)
    assert [c["where"] for c in checks] == [
        "experiments.a.span.hparams",
        "experiments.a.abmil.hparams",
        "experiments.b.y.hparams",
    ]


def test_encoder_and_names_checked_against_the_registry_and_the_experiments():
    assert resolve_encoder({"encoder": "resnet50", "layer": None, "weights": "imagenet"}) == (
        "layer3"
    )
    v1 = {"encoder": "resnet50", "layer": "layer4", "weights": "imagenet:IMAGENET1K_V1"}
    assert resolve_encoder(v1) == "layer4"
    with pytest.raises(SpanError, match=r"features\.layer: resnet50 has no output 'penultimate' "):
        resolve_encoder({"encoder": "resnet50", "layer": "penultimate", "weights": "imagenet"})
    with pytest.raises(SpanError, match=r"resnet18 has no imagenet:IMAGENET1K_V2 weights"):
        resolve_encoder({"encoder": "resnet18", "layer": None, "weights": "imagenet:IMAGENET1K_V2"})
    with pytest.raises(SpanError, match=r"features\.layer: uni has no output 'layer3'"):
        resolve_encoder({"encoder": "uni", "layer": "layer3", "weights": "hf-hub"})
    with pytest.raises(SpanError, match=r"features\.weights: uni has no imagenet weights"):
        resolve_encoder({"encoder": "uni", "layer": None, "weights": "imagenet"})
    experiments = {"main": {"span": None}}
    config = {"run_experiments": None, "predict": {"heatmaps": ["span"]}}
    assert check_names(config, experiments) == ["main"]
    with pytest.raises(SpanError, match="run_experiments: 'other' is not an experiment"):
        check_names({**config, "run_experiments": ["other"]}, experiments)
    with pytest.raises(SpanError, match=r"predict\.heatmaps: no experiment has a variant"):
        check_names({**config, "predict": {"heatmaps": ["x"]}}, experiments)


def test_cohort_sets_and_batches():
    cohort = Cohort(
        samples(("a", "t"), ("b", ""), ("c", "n"), ("d", "t", "/f/d.h5"), ("e", "", "/f/e.h5")),
        demo_generate=False,
        slides_per_job=1,
    )
    assert (cohort.patched, cohort.imported, cohort.labelled) == (
        ["a", "b", "c"],
        ["d", "e"],
        ["a", "c", "d"],
    )
    assert cohort.batches("patch") == {
        "labelled-1": ["a"],
        "labelled-2": ["c"],
        "unlabelled-1": ["b"],
    }
    assert cohort.batches("extract") == cohort.batches("patch")
    assert cohort.batch_of("import_features") == {"d": "labelled-1", "e": "unlabelled-1"}
    assert cohort.batches("demo_slides") == {}
    demo = Cohort(
        {"demo_00": Sample("demo_00", "resources/demo/slides/demo_00.tiff", "x")}, True, 5
    )
    assert demo.demo_made == ["demo_00"]


def test_split_plan_changes_with_what_the_split_reads_only():
    base = samples(("a", "t"), ("b", "n"), ("c", ""))
    fixed = {"protocol": "fixed", "seed": 42}
    plan = split_plan(base, ["n", "t"], fixed, 0.05)
    unlabelled_added = {**base, **samples(("z", ""))}
    moved = {**base, "a": Sample("a", "/elsewhere/a.svs", "t")}
    assert split_plan(unlabelled_added, ["n", "t"], fixed, 0.05) == plan
    assert split_plan(moved, ["n", "t"], fixed, 0.05) == plan
    for other in (
        split_plan({**base, **samples(("z", "t"))}, ["n", "t"], fixed, 0.05),
        split_plan(base, ["n", "t"], {**fixed, "seed": 7}, 0.05),
        split_plan(base, ["n", "t"], fixed, 0.1),
        split_plan(base, ["t", "n"], fixed, 0.05),
        split_plan(base, ["n", "t"], {**fixed, "protocol": "per_seed"}, 0.05),
    ):
        assert other != plan


def test_the_per_seed_protocol_ignores_the_sheets_split_column_in_its_key():
    """per_seed pools the official splits: editing them re-splits nothing; under fixed they win,
    so editing them re-splits; the protocol itself is part of the key."""
    base = samples(("a", "t"), ("b", "n"))
    official = {**base, "a": Sample("a", "/data/a.svs", "t", split="test")}
    assert split_key(base, "fixed") != split_key(official, "fixed")
    assert split_key(base, "per_seed") == split_key(official, "per_seed")
    assert split_key(base, "fixed") != split_key(base, "per_seed")
    per_seed = {"protocol": "per_seed", "seed": 42}
    assert split_plan(base, ["n", "t"], per_seed, 0.05) == split_plan(
        official, ["n", "t"], per_seed, 0.05
    )


def test_each_training_seed_reads_its_own_split_under_per_seed():
    fixed = demo_plan()
    assert fixed.splits_file(3) == "results/demo/splits.tsv"
    assert "--protocol fixed" in fixed.split_options and fixed.evaluate_options == (
        "--protocol fixed"
    )
    per_seed = demo_plan(splits={**CONFIG["splits"], "protocol": "per_seed"})
    assert per_seed.splits_file(3) == "results/demo/splits/seed3.tsv"
    assert per_seed.splits_file("{seed}") == per_seed.layout.seed_splits()
    words = shlex.split(per_seed.seed_split_options(3))
    assert words[words.index("--protocol") + 1] == "per_seed"
    assert words[words.index("--training-seed") + 1] == "3"
    assert "--test-fraction" not in words  # null: the protocol's 70/15/15
    assert per_seed.evaluate_options == "--protocol per_seed"
    assert per_seed.split_plan != fixed.split_plan


def test_layout_spells_every_path_once():
    lay = Layout("c", "resnet50-layer3")
    assert lay.patches("s") == "results/c/patches/s.h5"
    assert lay.patches() == "results/c/patches/{slide}.h5"
    assert lay.features("s") == "results/c/features/resnet50-layer3/s.h5"
    assert lay.store("features") == "results/c/features/resnet50-layer3/.store"
    assert lay.manifest("extract", "labelled-1") == (
        "results/c/features/resnet50-layer3/batches/extract/labelled-1.tsv"
    )
    assert lay.run("e", "v", 3, files.METRICS_JSON) == "results/c/e/v/seed3/metrics.json"
    assert (
        lay.run(name=files.CHECKPOINT)
        == "results/c/{experiment}/{variant}/seed{seed}/checkpoint.pt"
    )
    assert lay.log("train", "e/v/seed0") == "results/c/logs/train/e/v/seed0.log"
    assert lay.benchmark("train", "e/v/seed0") == "results/c/benchmarks/train/e/v/seed0.tsv"
    assert lay.benchmark("split") == "results/c/benchmarks/split.tsv"
    assert lay.splits == "results/c/splits.tsv"
    assert lay.seed_splits(2) == "results/c/splits/seed2.tsv"


def demo_plan(**changes) -> WorkflowPlan:
    config = copy.deepcopy(CONFIG)
    for key, value in changes.items():
        config[key] = value
    sheet = {
        f"demo_{i:02d}": Sample(
            f"demo_{i:02d}", f"resources/demo/slides/demo_{i:02d}.tiff", "clumped"
        )
        for i in range(3)
    }
    return WorkflowPlan.from_config(config, sheet)


def test_the_plan_of_the_demo_config():
    plan = demo_plan()
    assert plan.run_experiments == ["main"] and plan.sweeps == {"window_sweep": "window_side"}
    targets = plan.targets()
    assert targets[0] == "results/demo/qc/summary.tsv"
    assert "results/demo/features/resnet18-layer4/demo_02.h5" in targets
    assert "results/demo/main/report.md" in targets
    assert "results/demo/main/transmil/predictions.csv" in targets
    assert not any("window_sweep" in t for t in targets)
    assert "--no-strict" in plan.runtime("extract") and "--device auto" in plan.runtime("extract")
    assert "--threads" not in plan.runtime("train") and "--cache-mb 4096" in plan.runtime("train")
    assert "--device" not in plan.extract_options and "--encoder resnet18" in plan.extract_options


def test_training_words_merge_the_variants_overrides_and_its_teacher():
    experiments = copy.deepcopy(CONFIG["experiments"])
    experiments["main"] = [
        {"model": "abmil", "name": "abmil_relu", "hparams": {"attention_bias": False}},
        {"model": "mhim", "teacher": "abmil_relu", "training": {"epochs": 3}},
    ]
    plan = demo_plan(experiments=experiments, predict={"heatmaps": [], "heatmap_max_side": 100})
    words = shlex.split(plan.train_options("main", "mhim"))
    assert words[words.index("--epochs") + 1] == "3" and "--device" not in words
    hparams = json.loads(shlex.split(plan.hparams("main", "mhim", 1))[0])
    assert hparams["teacher_checkpoint"] == "results/demo/main/abmil_relu/seed1/checkpoint.pt"
    assert "teacher_checkpoint" not in json.loads(shlex.split(plan.hparams("main", "mhim"))[0])
    assert plan.teacher_files("main", "abmil_relu", 1) == {}
    runs = plan.evaluation_runs("main").split()
    assert runs[:3] == ["--run", "abmil_relu", "results/demo/main/abmil_relu/seed0"]
    labels = json.loads(shlex.split(demo_plan().variant_labels("ablation"))[0])
    assert labels["baseline"] == "Baseline"
    values = json.loads(shlex.split(demo_plan().sweep_values("window_sweep"))[0])
    assert values == {"w6": 6, "w2": 2, "w4": 4, "w8": 8, "w12": 12, "w16": 16}


def test_one_name_pattern_for_slides_cohorts_and_variants():
    """The schemas spell the pattern of a safe file name as the sample sheet's check does (the
    Snakefile's wildcard is built from it)."""
    from span.data.samplesheet import SLIDE_ID

    config = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    sheet = yaml.safe_load((REPO / "workflow/schemas/samples.schema.yaml").read_text())
    variant = config["properties"]["experiments"]["additionalProperties"]["items"]
    assert {
        config["properties"]["cohort"]["pattern"],
        sheet["properties"]["slide_id"]["pattern"],
        variant["properties"]["name"]["pattern"],
    } == {SLIDE_ID.pattern}


def test_the_longest_training_models_start_first():
    plan = demo_plan()  # heatmaps for span
    priority = {v: plan.priority("main", v) for v in plan.experiments["main"]}
    assert priority["transmil"] > priority["span"] > priority["abmil"] == priority["dtfd"]
    assert plan.priority("ablation", "baseline") < priority["span"]  # no heatmaps


def test_recipes_start_a_variant_and_its_own_keys_win():
    from span.plan.recipes import RECIPES

    authors = RECIPES["authors"]
    variants = parse_experiment(
        "e",
        [
            {"model": "span"},
            {"model": "span", "name": "a", "recipe": "authors"},
            {"model": "span", "name": "b", "recipe": "authors", "hparams": {"center": True}},
            {"model": "abmil", "recipe": "authors", "training": {"weight_decay": 0.0}},
        ],
    )
    assert variants["span"].recipe == "default" and variants["span"].hparams == {}
    assert variants["a"].hparams == authors.hparams["span"]
    assert variants["a"].training == authors.training
    assert variants["b"].hparams["center"] is True and variants["b"].hparams["head"] == "global"
    # baselines keep their architecture and take the recipe's training
    assert variants["abmil"].hparams == {}
    assert variants["abmil"].training == {**authors.training, "weight_decay": 0.0}
    # the config's recipe is every variant's unless it names its own
    both = parse_experiment(
        "e", [{"model": "span"}, {"model": "abmil", "recipe": "default"}], "authors"
    )
    assert both["span"].recipe == "authors" and both["abmil"].training == {}
    with pytest.raises(SpanError, match=r"experiments\.e\.span\.recipe: unknown recipe 'paper'"):
        parse_experiment("e", [{"model": "span", "recipe": "paper"}])


def test_the_schema_knows_every_recipe_and_every_recipe_option_exists():
    from span.models import build_model
    from span.plan.experiments import training_overrides
    from span.plan.recipes import RECIPES

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert schema["properties"]["recipe"]["enum"] == list(RECIPES)
    item = schema["properties"]["experiments"]["additionalProperties"]["items"]
    assert item["properties"]["recipe"]["enum"] == list(RECIPES)
    for recipe in RECIPES.values():
        training_overrides(f"recipe {recipe.name}", recipe.training)  # names, types, bounds
        for model, hparams in recipe.hparams.items():
            build_model(model, 64, 2, **hparams)  # every argument exists and is accepted
