"""Patient-level train/val/test splits: sizes, stability, grouping, official splits, files."""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from dataclasses import replace

import pytest

from span.data.samplesheet import Sample
from span.data.splits import (
    SplitRow,
    _patient_labels,
    check_classes,
    draw_seed,
    labels_by_split,
    make_splits,
    read_splits,
    write_splits,
)
from span.errors import SpanError

CLASSES = ["normal", "tumor"]


def _sheet(n: int, per_patient: int = 1, tumor_every: int = 3, split=None) -> list[Sample]:
    """`n` labelled slides, `per_patient` slides per patient (0 = no patient column)."""
    out = []
    for i in range(n):
        patient = f"P{i // per_patient:04d}" if per_patient else ""
        group = i // per_patient if per_patient else i
        label = "tumor" if group % tumor_every == 0 else "normal"
        out.append(
            Sample(
                slide_id=f"S{i:04d}",
                path=f"/slides/S{i:04d}.svs",
                label=label,
                patient=patient,
                split=split(i) if split else "",
            )
        )
    return out


def _by_split(rows: list[SplitRow]) -> dict[str, list[SplitRow]]:
    sets = defaultdict(list)
    for r in rows:
        sets[r.split].append(r)
    return sets


@pytest.mark.parametrize(("n", "test", "val"), [(30, 10, 3), (400, 133, 40)])
def test_sizes(n: int, test: int, val: int) -> None:
    rows, warnings = make_splits(_sheet(n, per_patient=0), CLASSES)
    sets = _by_split(rows)
    assert (len(sets["test"]), len(sets["val"]), len(sets["train"])) == (test, val, n - test - val)
    assert len(rows) == n and warnings == []
    assert [r.slide_id for r in rows] == sorted(r.slide_id for r in rows)


def test_stable_under_order_paths_features_and_unlabeled() -> None:
    sheet = _sheet(60, per_patient=2)
    rows, _ = make_splits(sheet, CLASSES)
    assert make_splits(sheet, CLASSES)[0] == rows
    shuffled = sheet[:]
    random.Random(0).shuffle(shuffled)
    assert make_splits(shuffled, CLASSES)[0] == rows
    moved = [
        replace(s, path=f"/elsewhere/{s.slide_id}.tif", features=f"{s.slide_id}.h5") for s in sheet
    ]
    assert make_splits(moved, CLASSES)[0] == rows
    unlabeled = [
        Sample("U0001", "/slides/U0001.svs", ""),
        Sample("A0000", "/slides/A0000.svs", "", patient="P0003"),
    ]
    assert make_splits(unlabeled + sheet, CLASSES)[0] == rows
    assert make_splits(sheet, CLASSES, seed=7)[0] != rows


def test_patients_never_straddle() -> None:
    sheet = _sheet(60, per_patient=3)
    # Give some patients slides with different labels.
    sheet = [replace(s, label="tumor") if i % 7 == 0 else s for i, s in enumerate(sheet)]
    rows, _ = make_splits(sheet, CLASSES)
    per_patient = defaultdict(set)
    for r in rows:
        per_patient[r.patient].add(r.split)
    assert all(len(sets) == 1 for sets in per_patient.values())
    counts = Counter(next(iter(sets)) for sets in per_patient.values())
    # 20 patients: test round(20/3) = 7, val round(0.15 * 13) = 2.
    assert counts == {"test": 7, "val": 2, "train": 11}


def test_slide_without_patient_is_its_own_patient() -> None:
    sheet = [Sample("P1", "a", "tumor")] + [
        Sample(f"S{i}", "a", "normal", patient="P1") for i in range(5)
    ]
    sheet += [Sample(f"T{i}", "a", CLASSES[i % 2]) for i in range(12)]
    rows, _ = make_splits(sheet, CLASSES)
    named = {r.split for r in rows if r.patient == "P1"}
    assert len(named) == 1
    assert {r.slide_id for r in rows} == {s.slide_id for s in sheet}


def test_patient_label_majority_then_class_order() -> None:
    groups = {
        (0, "a"): [Sample("1", "p", "tumor"), Sample("2", "p", "normal")],
        (0, "b"): [
            Sample("3", "p", "tumor"),
            Sample("4", "p", "tumor"),
            Sample("5", "p", "normal"),
        ],
    }
    assert _patient_labels(groups, CLASSES) == {(0, "a"): "normal", (0, "b"): "tumor"}


def test_partial_official_split_carves_val_from_train() -> None:
    sheet = _sheet(60, per_patient=1, split=lambda i: "test" if i % 3 == 0 else "train")
    rows, warnings = make_splits(sheet, CLASSES)
    official = {s.slide_id: s.split for s in sheet}
    got = {r.slide_id: r.split for r in rows}
    assert {k for k, v in got.items() if v == "test"} == {
        k for k, v in official.items() if v == "test"
    }
    assert all(official[k] == "train" for k, v in got.items() if v == "val")
    assert Counter(got.values()) == {"train": 34, "val": 6, "test": 20}  # round(0.15 * 40) = 6
    assert warnings == []
    shuffled = sheet[::-1]
    assert make_splits(shuffled, CLASSES)[0] == rows


def test_full_official_split_kept() -> None:
    sheet = _sheet(30, per_patient=2, split=lambda i: ("train", "val", "test")[i // 2 % 3])
    rows, warnings = make_splits(sheet, CLASSES)
    assert {r.slide_id: r.split for r in rows} == {s.slide_id: s.split for s in sheet}
    assert warnings == []
    only_test = _sheet(6, split=lambda i: "test")
    rows, warnings = make_splits(only_test, CLASSES)
    assert {r.split for r in rows} == {"test"}
    assert warnings == ["the official split has no train slides"]


def test_mixed_sheet_is_an_error() -> None:
    sheet = _sheet(10, split=lambda i: "train" if i < 5 else "")
    with pytest.raises(SpanError, match="split column is set for 5 labelled"):
        make_splits(sheet, CLASSES)
    # Unlabeled slides may leave the split empty.
    full = _sheet(10, split=lambda i: "train" if i < 7 else "test")
    make_splits([*full, Sample("U1", "p", "")], CLASSES)


def test_official_split_with_straddling_patient_is_an_error() -> None:
    sheet = _sheet(10, per_patient=2, split=lambda i: "train" if i < 5 else "test")
    with pytest.raises(SpanError, match="patient 'P0002' has slides in several splits"):
        make_splits(sheet, CLASSES)


def test_unlabeled_slides_are_omitted() -> None:
    sheet = _sheet(20) + [Sample(f"U{i}", "p", "", patient=f"P{i:04d}") for i in range(5)]
    rows, _ = make_splits(sheet, CLASSES)
    assert len(rows) == 20
    assert not any(r.slide_id.startswith("U") for r in rows)
    assert all(r.label for r in rows)


def test_stratified_when_enough_patients() -> None:
    rows, warnings = make_splits(_sheet(300, per_patient=1), CLASSES)  # 100 tumor, 200 normal
    assert warnings == []
    sets = _by_split(rows)
    test = Counter(r.label for r in sets["test"])
    assert test == {"tumor": 33, "normal": 67}
    val = Counter(r.label for r in sets["val"])
    assert sum(val.values()) == 30 and abs(val["tumor"] - 10) <= 1


def test_random_with_warning_when_a_class_is_too_small() -> None:
    sheet = _sheet(30, tumor_every=1000)  # a single tumor patient
    rows, warnings = make_splits(sheet, CLASSES)
    assert any("test split is random" in w and "'tumor' has only 1" in w for w in warnings)
    assert Counter(r.split for r in rows) == {"train": 17, "val": 3, "test": 10}


def test_random_with_warning_when_a_cut_is_smaller_than_the_classes() -> None:
    classes = ["a", "b", "c", "d", "e"]
    sheet = [Sample(f"S{i:02d}", "p", classes[i % 5]) for i in range(30)]
    _, warnings = make_splits(sheet, classes)
    assert [w for w in warnings if w.startswith("val split is random")]
    assert not [w for w in warnings if w.startswith("test split")]


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (3, {"train": 1, "val": 1, "test": 1}),
        (2, {"train": 1, "test": 1}),
        (1, {"train": 1}),
    ],
)
def test_tiny_cohorts(n: int, expected: dict[str, int]) -> None:
    rows, warnings = make_splits(_sheet(n), CLASSES)
    assert Counter(r.split for r in rows) == expected
    assert any(w.startswith("no val set") for w in warnings) == (n < 3)


def test_bad_inputs() -> None:
    with pytest.raises(SpanError, match="not one of the classes"):
        make_splits([Sample("S1", "p", "other")], CLASSES)
    with pytest.raises(SpanError, match="test_fraction"):
        make_splits(_sheet(10), CLASSES, test_fraction=1.0)
    assert make_splits([Sample("S1", "p", "")], CLASSES) == (
        [],
        ["no labelled slides: nothing to split"],
    )


def test_excluded_slides_take_no_part_in_the_cut() -> None:
    sheet = _sheet(30)
    gone = {"S0003": "no tissue patches", "S0017": "bad tiles: 9 of 40 could not be read"}
    rows, _ = make_splits(sheet, CLASSES, excluded=gone)
    by_id = {r.slide_id: r for r in rows}
    assert len(rows) == 30
    assert {s: (by_id[s].split, by_id[s].excluded) for s in gone} == {
        s: ("excluded", reason) for s, reason in gone.items()
    }
    kept = [s for s in sheet if s.slide_id not in gone]
    assert [r for r in rows if r.split != "excluded"] == make_splits(kept, CLASSES)[0]


def test_write_read_round_trip(tmp_path) -> None:
    rows, _ = make_splits(_sheet(40, per_patient=2)[::-1], CLASSES, excluded={"S0004": "blank"})
    path = tmp_path / "out" / "splits.tsv"
    write_splits(rows[::-1], path)
    lines = path.read_text().splitlines()
    assert lines[0] == "slide_id\tpatient\tlabel\tsplit\texcluded"
    assert "S0004\tP0002\tnormal\texcluded\tblank" in lines
    assert [line.split("\t")[0] for line in lines[1:]] == sorted(r.slide_id for r in rows)
    assert read_splits(path) == sorted(rows, key=lambda r: r.slide_id)
    assert [p.name for p in path.parent.iterdir()] == ["splits.tsv"]


def test_read_splits_errors(tmp_path) -> None:
    with pytest.raises(SpanError, match="splits file not found"):
        read_splits(tmp_path / "missing.tsv")
    bad = tmp_path / "bad.tsv"
    bad.write_text("a,b,c\n")
    with pytest.raises(SpanError, match="not a splits file"):
        read_splits(bad)
    bad.write_text("slide_id\tpatient\tlabel\tsplit\nS1\t\ttumor\ttest\n")  # an older version's
    with pytest.raises(SpanError, match="not a splits file of this version"):
        read_splits(bad)
    bad.write_text("slide_id\tpatient\tlabel\tsplit\texcluded\nS1\t\ttumor\n")
    with pytest.raises(SpanError, match="line 2: expected 5 columns"):
        read_splits(bad)
    bad.write_text("slide_id\tpatient\tlabel\tsplit\texcluded\nS1\t\ttumor\tholdout\t\n")
    with pytest.raises(SpanError, match="bad slide_id or split"):
        read_splits(bad)
    bad.write_text(
        "slide_id\tpatient\tlabel\tsplit\texcluded\nS1\t\ttumor\ttest\t\nS1\t\ttumor\ttrain\t\n"
    )
    with pytest.raises(SpanError, match="duplicate slide_id 'S1'"):
        read_splits(bad)


# --- splits.protocol per_seed: the SPAN authors' protocol, one split per training seed


def _per_seed(sheet: list[Sample], training_seed: int, **options) -> list[SplitRow]:
    rows, _ = make_splits(
        sheet, CLASSES, protocol="per_seed", training_seed=training_seed, **options
    )
    return rows


def _patients_by_split(rows: list[SplitRow]) -> dict[str, set[str]]:
    sets = defaultdict(set)
    for r in rows:
        sets[r.split].add(r.patient or r.slide_id)
    return sets


def test_per_seed_defaults_to_the_authors_70_15_15() -> None:
    rows = _per_seed(_sheet(100, per_patient=0), 0)
    assert Counter(r.split for r in rows) == {"train": 70, "val": 15, "test": 15}
    rows = _per_seed(_sheet(100, per_patient=0), 0, test_fraction=0.2, val_fraction=0.25)
    assert Counter(r.split for r in rows) == {"train": 60, "val": 20, "test": 20}


def test_per_seed_splits_are_stratified_patient_level_and_disjoint() -> None:
    sheet = _sheet(300, per_patient=2, tumor_every=3)  # 150 patients, 50 tumour
    for training_seed in range(3):
        rows = _per_seed(sheet, training_seed)
        assert sorted(r.slide_id for r in rows) == sorted(s.slide_id for s in sheet)
        per_patient = defaultdict(set)
        for r in rows:
            per_patient[r.patient].add(r.split)
        assert all(len(sets) == 1 for sets in per_patient.values())
        patients = _patients_by_split(rows)
        assert {len(p) for p in patients.values()} <= {105, 22, 23}  # 70/15/15 of 150
        assert sum(len(p) for p in patients.values()) == 150
        for name, ids in patients.items():
            tumour = sum(int(p[1:]) % 3 == 0 for p in ids)
            assert abs(tumour - len(ids) / 3) <= 1, (training_seed, name, tumour, len(ids))


def test_per_seed_splits_are_deterministic_and_differ_across_seeds() -> None:
    sheet = _sheet(60, per_patient=2)
    first = _per_seed(sheet, 0)
    assert _per_seed(sheet, 0) == first
    assert _per_seed(sheet[::-1], 0) == first
    tests = [_patients_by_split(_per_seed(sheet, k))["test"] for k in range(5)]
    assert len({frozenset(t) for t in tests}) == 5
    assert _per_seed(sheet, 0, seed=7) != first
    assert draw_seed(42, 1) != draw_seed(43, 0) and draw_seed(42, 1) == draw_seed(42, 1)


def test_per_seed_pools_the_official_split_with_a_note() -> None:
    """The sheet's split column is ignored (a partial or patient-straddling one included), and
    the draw is the same as without it."""
    plain = _sheet(40, per_patient=2)
    official = [replace(s, split="test" if i < 10 else "train") for i, s in enumerate(plain)]
    rows, warnings = make_splits(official, CLASSES, protocol="per_seed", training_seed=1)
    assert rows == _per_seed(plain, 1)
    assert "the sheet's split column is ignored" in warnings[0]
    straddling = [replace(s, split="train" if i % 2 else "") for i, s in enumerate(plain)]
    assert _per_seed(straddling, 1) == rows
    assert not [w for w in make_splits(plain, CLASSES, protocol="per_seed", training_seed=1)[1]]


def test_per_seed_keeps_excluded_slides_out_of_every_draw() -> None:
    gone = {"S0003": "no tissue patches"}
    for training_seed in (0, 1):
        rows = _per_seed(_sheet(30), training_seed, excluded=gone)
        assert [(r.split, r.excluded) for r in rows if r.slide_id == "S0003"] == [
            ("excluded", "no tissue patches")
        ]


def test_the_fixed_protocol_is_the_default_and_unchanged() -> None:
    """fixed with its null fractions is the paper's split (1/3, then 15% of the rest, seed 42),
    whatever the training seed would be."""
    sheet = _sheet(60, per_patient=2)
    rows, _ = make_splits(sheet, CLASSES)
    explicit = make_splits(
        sheet, CLASSES, seed=42, test_fraction=0.3333333333, val_fraction=0.15, protocol="fixed"
    )[0]
    assert rows == explicit
    assert Counter(r.split for r in rows) == {"train": 34, "val": 6, "test": 20}


def test_a_protocol_and_training_seed_that_disagree_are_one_line() -> None:
    with pytest.raises(SpanError, match="per_seed needs a training seed"):
        make_splits(_sheet(10), CLASSES, protocol="per_seed")
    with pytest.raises(SpanError, match="fixed takes no training seed"):
        make_splits(_sheet(10), CLASSES, training_seed=0)
    with pytest.raises(SpanError, match=r"set splits\.protocol to one of"):
        make_splits(_sheet(10), CLASSES, protocol="random")


def _split_command(capsys, tmp_path, rows: list[tuple[str, str, str]], *options: str):
    """`span split` on a sheet of (slide_id, label, split) rows: its exit status and its
    console's lines without their time ('ERROR span: ...', 'WARNING span.data.cli: ...')."""
    from span.cli import main

    sheet = tmp_path / "s.tsv"
    lines = ["slide_id\tpath\tlabel\tsplit", *(f"{s}\t{s}.svs\t{lab}\t{sp}" for s, lab, sp in rows)]
    sheet.write_text("\n".join(lines) + "\n")
    args = ["split", "--samples", str(sheet), "--classes", *CLASSES]
    status = main([*args, *options, "--out", str(tmp_path / "splits.tsv")])
    return status, [line.split(" ", 1)[1] for line in capsys.readouterr().err.splitlines()]


def _errors(lines: list[str]) -> list[str]:
    return [line.removeprefix("ERROR span: ") for line in lines if line.startswith("ERROR")]


@pytest.mark.parametrize("protocol", [["--protocol", "fixed"], ["--protocol", "per_seed"]])
def test_a_one_class_cohort_stops_the_split_with_its_counts(tmp_path, capsys, protocol) -> None:
    seed = ["--training-seed", "0"] if "per_seed" in protocol else []
    rows = [(f"S{i}", "normal", "") for i in range(7)]
    status, lines = _split_command(capsys, tmp_path, rows, *protocol, *seed)
    (error,) = _errors(lines)
    assert status == 1 and not (tmp_path / "splits.tsv").exists()
    assert re.fullmatch(
        f"{re.escape(str(tmp_path / 's.tsv'))}: only class 'normal' among the labelled slides "
        r"that are not excluded, and a classifier needs two \(slides per class: train normal \d, "
        r"tumor 0; val normal 1, tumor 0; test normal \d, tumor 0\)\. Fix: label slides of at "
        r"least two of the classes \['normal', 'tumor'\]",
        error,
    )


def test_an_official_split_without_a_class_in_test_stops_the_split(tmp_path, capsys) -> None:
    rows = [(f"S{i}", CLASSES[i % 2], "train") for i in range(6)]
    rows += [("V0", "normal", "val"), ("V1", "tumor", "val"), ("T0", "normal", "test")]
    status, lines = _split_command(capsys, tmp_path, rows)
    assert status == 1 and not (tmp_path / "splits.tsv").exists()
    assert _errors(lines) == [
        f"{tmp_path / 's.tsv'}: the test set has no 'tumor' slide (slides per class: train "
        "normal 3, tumor 3; val normal 1, tumor 1; test normal 1, tumor 0). Fix: label more "
        "patients of 'tumor' (a class needs 2 to reach train and test, 3 to reach validation "
        "too), raise splits.test_fraction, or put some in test with the sheet's split column"
    ]


def test_a_class_of_one_patient_stops_every_per_seed_draw(tmp_path, capsys) -> None:
    """One tumour patient lands in train, validation or test: train or test lacks it."""
    rows = [(f"S{i}", "normal", "") for i in range(12)] + [("T", "tumor", "")]
    for seed in range(3):
        per_seed = ("--protocol", "per_seed", "--training-seed", str(seed))
        status, lines = _split_command(capsys, tmp_path, rows, *per_seed)
        (error,) = _errors(lines)
        assert status == 1 and re.search(r": the (train|test) set has no 'tumor' slide", error)
        # what make_splits warned first says why
        assert any("split is random, not stratified: class 'tumor' has only 1" in x for x in lines)


def test_a_class_missing_from_validation_warns_what_early_stopping_means(tmp_path, capsys):
    """9 patients (the fixed protocol): test 3 (stratified), validation 1, so one class only."""
    rows = [(f"S{i}", CLASSES[i % 2], "") for i in range(9)]
    status, lines = _split_command(capsys, tmp_path, rows)
    assert status == 0
    (warning,) = [x for x in lines if x.startswith("WARNING span.data.cli: validation")]
    assert re.fullmatch(
        r"WARNING span\.data\.cli: validation has no '(normal|tumor)' slide \(slides per class: "
        r"train .*\): its AUC is undefined, so early stopping and the checkpoint kept go by "
        r"validation loss alone; test metrics are unaffected\. To avoid it: label more patients "
        r"of .*",
        warning,
    )
    sets = _by_split(read_splits(tmp_path / "splits.tsv"))
    assert {r.label for r in sets["test"]} == set(CLASSES) and len(sets["val"]) == 1


def test_class_checks_count_excluded_slides_and_name_a_class_without_slides() -> None:
    rows, _ = make_splits(_sheet(30), CLASSES, excluded={"S0001": "no tissue patches"})
    sets = labels_by_split(rows)
    assert check_classes(sets, CLASSES, None, excluded=1) == []
    with pytest.raises(SpanError) as err:
        check_classes(sets, [*CLASSES, "other"], "s.tsv", excluded=1)
    assert str(err.value).startswith("s.tsv: the train set has no 'other' slide (slides per ")
    assert str(err.value).endswith(
        "test normal 7, tumor 3, other 0; 1 excluded). Fix: label slides of 'other', or "
        "remove it from the config's classes"
    )
    with pytest.raises(SpanError, match=r"only class 'normal' .* qc/summary\.tsv says why"):
        check_classes({"train": ["normal"]}, CLASSES, None, excluded=2)
