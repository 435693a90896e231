"""The spatial benchmark's options (benchmarks/bench_spatial.py, span.synthetic.spatial_benchmark):
levels of patch accuracy and variants parsed and checked, each in its own run folder, and
finished runs not trained again."""

from __future__ import annotations

import argparse

import pytest

from span.errors import SpanError
from span.synthetic import patch_level
from span.synthetic.spatial_benchmark import (
    Cohort,
    Variant,
    make_variant,
    parse_assignment,
    prepare,
    train_one,
)


def test_patch_levels_parse_and_name_their_cohorts():
    assert patch_level("0.9") == 0.9
    assert patch_level("certain") is None and patch_level("1") is None
    for bad in ("0.5", "1.5", "high"):
        with pytest.raises(argparse.ArgumentTypeError):
            patch_level(bad)
    levels = [Cohort("clumped", 120, 1024, a) for a in (0.8, 0.9, None)]
    assert [c.name for c in levels] == [
        "clumped-120-1024d-0.8",
        "clumped-120-1024d-0.9",
        "clumped-120-1024d-certain",
    ]
    assert [c.checked for c in levels] == [False, True, True]


def test_assignments_are_typed():
    words = ["center=false", "flips=True", "embed_dim=none", "translate=0", "weight_decay=1e-4"]
    assert dict(map(parse_assignment, [*words, "conv_init=random"])) == {
        "center": False,
        "flips": True,
        "embed_dim": None,
        "translate": 0,
        "weight_decay": 1e-4,
        "conv_init": "random",
    }
    with pytest.raises(argparse.ArgumentTypeError, match="key=value"):
        parse_assignment("center")


def test_a_variant_names_its_runs_and_sets_their_training():
    default = make_variant({}, {}, [64])
    assert default == Variant() and default.run_name("span") == "span"
    variant = make_variant(
        {"span": {"center": False, "conv_init": "random"}},
        {"flips": False, "weight_decay": 1e-4},
        [64],
    )
    assert variant.run_name("span") == (
        "span+center=false+conv_init=random+flips=false+weight_decay=0.0001"
    )
    assert variant.run_name("abmil") == "abmil+flips=false+weight_decay=0.0001"
    config = variant.config(seed=3)
    assert (config.seed, config.weight_decay, config.augment.flips) == (3, 1e-4, False)
    assert config.augment.translate == default.config(3).augment.translate


@pytest.mark.parametrize(
    ("hparams", "training", "named"),
    [
        ({}, {"flip": False}, "--train: no option flip"),
        ({}, {"translate": "x"}, "--train.translate"),
        ({}, {"patch_drop": 1.5}, "--train.patch_drop"),
        ({"span": {"centre": False}}, {}, "--span-hparams"),
        ({"span": {"head": "mean"}}, {}, "--span-hparams"),
    ],
)
def test_a_wrong_option_is_one_line_naming_it(hparams, training, named):
    with pytest.raises(SpanError, match=named):
        make_variant(hparams, training, [64])


def test_finished_runs_are_kept_and_variants_never_mix(tmp_path):
    cohort = Cohort("clumped", 12, 16, 0.9)
    folder = prepare(tmp_path, cohort)
    assert folder.name == "clumped-12-16d-0.9"
    short = make_variant({}, {"epochs": 1}, [16])
    run = train_one(folder, cohort.classes, "abmil", 0, short)
    assert run == folder / "abmil+epochs=1" / "seed0"
    written = (run / "metrics.json").stat().st_mtime_ns
    assert train_one(folder, cohort.classes, "abmil", 0, short) == run
    assert (run / "metrics.json").stat().st_mtime_ns == written  # not trained again
    other = make_variant({"abmil": {"gated": True}}, {"epochs": 1}, [16])
    assert train_one(folder, cohort.classes, "abmil", 0, other).parent.name == (
        "abmil+gated=true+epochs=1"
    )
    assert (run / "metrics.json").stat().st_mtime_ns == written


def test_a_recipe_starts_the_variant_and_names_its_runs():
    from span.plan.recipes import RECIPES

    authors = make_variant({"span": {"center": True}}, {"epochs": 3}, [64], "authors")
    assert authors.run_name("span") == "span@authors+center=true+epochs=3"
    assert authors.run_name("abmil") == "abmil@authors+epochs=3"
    assert authors.model_hparams("span") == {**RECIPES["authors"].hparams["span"], "center": True}
    assert authors.model_hparams("abmil") == {}
    config = authors.config(seed=1)
    assert (config.epochs, config.weight_decay, config.class_weighted, config.cosine) == (
        3,
        1e-4,
        True,
        True,
    )
    assert config.augment.affine and not config.augment.flips and config.augment.translate == 0
