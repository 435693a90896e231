"""Train/val/test splits of the labelled slides, made at the patient level.

Two protocols (`protocol`):

* `fixed` (the paper's, the default): one split, seed `seed`, serves every training seed; the
  sheet's `split` column wins where given. Seeds then measure training variation only.
* `per_seed` (the SPAN authors' code, wwyi1828/SPAN): the sheet's `split` column is ignored
  (official train and test pooled) and every training seed gets its own split, drawn with
  `draw_seed(seed, training_seed)`, so that seeds measure data variation too. Its fractions
  default to 70/15/15 of the patients.

Rules, applied by `make_splits`:

* Only labelled slides are split; unlabeled slides are omitted from the rows (they are predicted
  anyway). A slide the QC excludes (`excluded`: slide id -> reason, from the features files by
  span.data.qc_summary's rule) takes no part in the cut: its row has split `excluded` and the
  reason. A slide without a patient is its own patient. A patient's label is the most frequent
  label of its slides (ties: the class listed first in `classes`).
* Official splits win: if every labelled slide has a sheet `split`, it is kept. If only some do,
  that is an error. If the official split has no val slides, val is carved from the train
  patients (`val_fraction`); test is never touched. A patient spanning sets is an error.
* Without a split column (or with `per_seed`): test = `test_fraction` of the patients, then val
  = `val_fraction` of the remaining patients; the rest is train. A fraction left None is the
  protocol's (`PROTOCOL_FRACTIONS`).
* One cut of k patients out of n: k = round(fraction * n) (Python's round, half to even); if
  fraction > 0 and n >= 2, k is clamped to [1, n - 1] so both sides keep a patient; if n < 2 or
  fraction == 0, k = 0. With the default fractions, 3+ patients fill train, val and test.
* A cut is stratified by patient label when every class present among its n patients has at least
  2 patients and both k and n - k are at least the number of classes present (scikit-learn's
  requirements); otherwise it is plain random and a warning says why.
* Every class must reach train and test (`check_classes`, run by `span split` and again by
  `span train`): a cohort whose labelled, kept slides have fewer than two classes, or a split
  that leaves a class out of train or test, stops with one line of the counts per set. Without
  a class in test its AUC, balanced accuracy and p-values are undefined or misleading; without
  it in train the model never sees it. A class missing from validation only warns: early
  stopping then goes by validation loss (its AUC is undefined), the test metrics keep their
  meaning, and small cohorts (a class of 2 patients, a validation set of one slide) can still
  run.
* Patients are sorted by id, then cut with scikit-learn's `train_test_split(random_state=seed)`
  (per_seed: the drawn seed): the result depends only on (slide_id, patient, label, split) of the
  labelled slides (per_seed: not split), the exclusions, the classes, the protocol and the
  seeds, never on row order or other columns.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from span.atomic import write_text_atomic
from span.data.samplesheet import SPLITS, Sample
from span.errors import SpanError
from span.settings.stages import SplitSettings

COLUMNS = ("slide_id", "patient", "label", "split", "excluded")
EXCLUDED = "excluded"  # the split of a slide the QC excludes

#: Each protocol's (test_fraction, val_fraction) where the config leaves them None: the paper's
#: one third, then 15% of the rest (fixed); the authors' 70/15/15 of all patients (per_seed:
#: 15% of the 85% left after test is 0.15 / 0.85 of them).
PROTOCOL_FRACTIONS = {"fixed": (0.3333333333, 0.15), "per_seed": (0.15, 0.15 / 0.85)}

# A patient group: (0, patient id) for a named patient, (1, slide_id) for a slide on its own, so a
# slide id can never collide with a patient id.
_Key = tuple[int, str]


@dataclass(frozen=True)
class SplitRow:
    """One labelled slide and its set; `patient` is the sheet's value ('' = its own patient)."""

    slide_id: str
    patient: str
    label: str
    split: str
    excluded: str = ""  # why, when split is EXCLUDED


def _key(s: Sample) -> _Key:
    return (0, s.patient) if s.patient else (1, s.slide_id)


def _name(key: _Key) -> str:
    return f"patient {key[1]!r}" if key[0] == 0 else f"slide {key[1]!r}"


def _cut_size(n: int, fraction: float) -> int:
    """Patients cut out of `n`: round(fraction * n), clamped to [1, n - 1] when n >= 2."""
    if n < 2 or fraction <= 0:
        return 0
    return min(max(round(fraction * n), 1), n - 1)


def _cut(
    keys: list[_Key],
    labels: dict[_Key, str],
    fraction: float,
    seed: int,
    what: str,
    warnings: list[str],
) -> tuple[list[_Key], list[_Key]]:
    """Split sorted patient `keys` into (rest, cut), stratified when possible."""
    from sklearn.model_selection import train_test_split

    keys = sorted(keys)
    k = _cut_size(len(keys), fraction)
    if k == 0:
        if fraction > 0:
            warnings.append(
                f"no {what} set: only {len(keys)} patient(s) to split (need at least 2)"
            )
        return keys, []
    strata = [labels[key] for key in keys]
    counts = Counter(strata)
    rarest, fewest = min(sorted(counts.items()), key=lambda item: item[1])
    reason = ""
    if fewest < 2:
        reason = f"class {rarest!r} has only {fewest} patient(s) (need at least 2 per class)"
    elif min(k, len(keys) - k) < len(counts):
        reason = (
            f"a {k}/{len(keys) - k} patient cut cannot hold all {len(counts)} classes on both sides"
        )
    if reason:
        warnings.append(f"{what} split is random, not stratified: {reason}")
    rest, cut = train_test_split(
        list(range(len(keys))), test_size=k, random_state=seed, stratify=None if reason else strata
    )
    return sorted(keys[i] for i in rest), sorted(keys[i] for i in cut)


def _patient_labels(groups: dict[_Key, list[Sample]], classes: Sequence[str]) -> dict[_Key, str]:
    """Each patient's most frequent slide label; ties go to the class listed first."""
    order = {c: i for i, c in enumerate(classes)}
    labels = {}
    for key, slides in groups.items():
        counts = Counter(s.label for s in slides)
        labels[key] = min(counts, key=lambda c: (-counts[c], order[c]))
    return labels


def _check(labelled: list[Sample], classes: Sequence[str], fractions: dict[str, float]) -> None:
    for name, value in fractions.items():
        if not 0 <= value < 1:
            raise SpanError(None, f"{name} is {value}", f"set {name} to a fraction in [0, 1)")
    seen: set[str] = set()
    for s in labelled:
        if s.slide_id in seen:
            raise SpanError(None, f"duplicate slide_id {s.slide_id!r}", "make slide ids unique")
        seen.add(s.slide_id)
        if s.label not in classes:
            raise SpanError(
                None,
                f"label {s.label!r} of {s.slide_id!r} is not one of the classes {list(classes)}",
                "fix the label or add the class",
            )
        if s.split and s.split not in SPLITS:
            raise SpanError(
                None,
                f"split {s.split!r} of {s.slide_id!r} is not one of {SPLITS}",
                "fix the sheet's split column",
            )


def _official(groups: dict[_Key, list[Sample]]) -> dict[_Key, str]:
    """The sheet's split per patient; a patient whose slides are in several sets is an error."""
    assigned = {}
    for key, slides in sorted(groups.items()):
        sets = sorted({s.split for s in slides})
        if len(sets) > 1:
            where = ", ".join(f"{s.slide_id}={s.split}" for s in sorted(slides, key=_slide_id))
            raise SpanError(
                None,
                f"{_name(key)} has slides in several splits ({where})",
                "put all slides of a patient in the same split (train, val or test)",
            )
        assigned[key] = sets[0]
    return assigned


def _slide_id(s: Sample) -> str:
    return s.slide_id


def shares_test_set(protocol: str) -> bool:
    """Whether every training seed is tested on the same slides (evaluation's seed averages
    and DeLong's test need that): true for `fixed` only."""
    return protocol == "fixed"


def draw_seed(seed: int, training_seed: int) -> int:
    """The seed of a per_seed split: both seeds mixed by numpy's SeedSequence, so that no two
    (seed, training_seed) pairs share a draw by accident (as 42 + 1 and 43 + 0 would)."""
    return int(np.random.SeedSequence([seed, training_seed]).generate_state(1)[0])


def _protocol_seed(protocol: str, seed: int, training_seed: int | None) -> int:
    """The seed of the patient draw: `seed` (fixed) or the training seed's own (per_seed)."""
    if protocol not in PROTOCOL_FRACTIONS:
        raise SpanError(
            None,
            f"splits.protocol is {protocol!r}",
            f"set splits.protocol to one of {list(PROTOCOL_FRACTIONS)}",
        )
    if (protocol == "per_seed") != (training_seed is not None):
        need = "needs a" if protocol == "per_seed" else "takes no"
        raise SpanError(
            None,
            f"splits.protocol {protocol} {need} training seed (given: {training_seed})",
            "let the workflow pass --training-seed, which it does for per_seed only",
        )
    return seed if training_seed is None else draw_seed(seed, training_seed)


def _pooled(labelled: list[Sample], training_seed: int | None) -> tuple[list[Sample], list[str]]:
    """per_seed: the slides without the sheet's splits (official sets pooled), and a note
    saying so where the sheet had any."""
    if not any(s.split for s in labelled):
        return labelled, []
    note = (
        "splits.protocol per_seed: the sheet's split column is ignored (official train, val "
        f"and test pooled); training seed {training_seed} gets its own split"
    )
    return [replace(s, split="") for s in labelled], [note]


_DEFAULT = SplitSettings()


def make_splits(
    samples: list[Sample],
    classes: list[str],
    seed: int = _DEFAULT.seed,
    test_fraction: float | None = _DEFAULT.test_fraction,
    val_fraction: float | None = _DEFAULT.val_fraction,
    protocol: str = _DEFAULT.protocol,
    excluded: Mapping[str, str] | None = None,
    training_seed: int | None = None,
) -> tuple[list[SplitRow], list[str]]:
    """Assign every labelled slide to train/val/test at the patient level (see module doc);
    `training_seed` is the training run whose split `per_seed` draws.

    Returns the rows sorted by slide_id (unlabeled slides omitted) and human-readable warnings.
    """
    excluded = excluded or {}
    draw = _protocol_seed(protocol, seed, training_seed)
    test_default, val_default = PROTOCOL_FRACTIONS[protocol]
    test_fraction = test_default if test_fraction is None else test_fraction
    val_fraction = val_default if val_fraction is None else val_fraction
    labelled = sorted((s for s in samples if s.label), key=_slide_id)
    _check(labelled, classes, {"test_fraction": test_fraction, "val_fraction": val_fraction})
    notes = []
    if protocol == "per_seed":
        labelled, notes = _pooled(labelled, training_seed)
    left_out = [
        SplitRow(s.slide_id, s.patient, s.label, EXCLUDED, excluded[s.slide_id])
        for s in labelled
        if s.slide_id in excluded
    ]
    labelled = [s for s in labelled if s.slide_id not in excluded]
    rows, warnings = _assign(labelled, classes, draw, test_fraction, val_fraction)
    return sorted(rows + left_out, key=lambda r: r.slide_id), notes + warnings


def _assign(
    labelled: list[Sample],
    classes: list[str],
    seed: int,
    test_fraction: float,
    val_fraction: float,
) -> tuple[list[SplitRow], list[str]]:
    """The protocol's train/val/test rows of the slides taking part in the cut."""
    warnings: list[str] = []
    if not labelled:
        return [], ["no labelled slides: nothing to split"]
    groups: dict[_Key, list[Sample]] = defaultdict(list)
    for s in labelled:
        groups[_key(s)].append(s)
    labels = _patient_labels(groups, classes)

    with_split = [s.slide_id for s in labelled if s.split]
    if with_split and len(with_split) < len(labelled):
        without = [s.slide_id for s in labelled if not s.split]
        shown = ", ".join(without[:5]) + (", ..." if len(without) > 5 else "")
        raise SpanError(
            None,
            f"the sheet's split column is set for {len(with_split)} labelled slide(s) but empty "
            f"for {len(without)} ({shown})",
            "give every labelled slide a split (train, val or test), or leave the column empty "
            "for all so the splits are made automatically",
        )
    if with_split:
        assigned = _official(groups)
        if "val" not in assigned.values() and "train" in assigned.values():
            train = [key for key, split in assigned.items() if split == "train"]
            _, val = _cut(train, labels, val_fraction, seed, "val", warnings)
            assigned.update(dict.fromkeys(val, "val"))
        warnings += [
            f"the official split has no {x} slides"
            for x in ("train", "test")
            if x not in assigned.values()
        ]
    else:
        rest, test = _cut(list(groups), labels, test_fraction, seed, "test", warnings)
        train, val = _cut(rest, labels, val_fraction, seed, "val", warnings)
        assigned = {
            **dict.fromkeys(train, "train"),
            **dict.fromkeys(val, "val"),
            **dict.fromkeys(test, "test"),
        }
    rows = [SplitRow(s.slide_id, s.patient, s.label, assigned[_key(s)]) for s in labelled]
    return rows, warnings


def labels_by_split(rows: Sequence[SplitRow]) -> dict[str, list[str]]:
    """The labels of each set's slides (train, val, test; excluded slides left out)."""
    return {name: [r.label for r in rows if r.split == name] for name in SPLITS}


def _any_of(names: Sequence[str]) -> str:
    """'a', 'a' or 'b', 'a', 'b' or 'c'."""
    quoted = [repr(n) for n in names]
    return " or ".join(filter(None, (", ".join(quoted[:-1]), quoted[-1])))


def _count_text(counts: Mapping[str, Counter], classes: Sequence[str], excluded: int) -> str:
    """'slides per class: train a 8, b 9; val a 1, b 0; test a 3, b 3; 2 excluded'."""
    sets = "; ".join(
        f"{name} " + ", ".join(f"{c} {counts[name][c]}" for c in classes) for name in SPLITS
    )
    return f"slides per class: {sets}" + (f"; {excluded} excluded" if excluded else "")


def _missing_class_fix(name: str, missing: list[str], counts: Mapping[str, Counter]) -> str:
    """How to give set `name` slides of the `missing` classes."""
    if not any(counts[s][c] for s in SPLITS for c in missing):
        return f"label slides of {_any_of(missing)}, or remove it from the config's classes"
    larger = ", raise splits.test_fraction" if name == "test" else ""
    return (
        f"label more patients of {_any_of(missing)} (a class needs 2 to reach train and test, 3 "
        f"to reach validation too){larger}, or put some in {name} with the sheet's split column"
    )


def check_classes(
    sets: Mapping[str, Sequence[str]],
    classes: Sequence[str],
    where: str | Path | None,
    excluded: int = 0,
) -> list[str]:
    """Stop (SpanError on `where`) when the labels per set (`labels_by_split`) have fewer than
    two classes, or train or test lacks one; warn when validation lacks one (module doc)."""
    counts = {name: Counter(sets.get(name, ())) for name in SPLITS}
    text = _count_text(counts, classes, excluded)
    present = [c for c in classes if any(counts[name][c] for name in SPLITS)]
    if len(present) < 2:
        found = f"only class {present[0]!r}" if present else "no class"
        raise SpanError(
            where,
            f"{found} among the labelled slides that are not excluded, and a classifier needs "
            f"two ({text})",
            f"label slides of at least two of the classes {list(classes)}"
            + ("; qc/summary.tsv says why slides are excluded" if excluded else ""),
        )
    for name in ("train", "test"):
        if missing := [c for c in classes if not counts[name][c]]:
            raise SpanError(
                where,
                f"the {name} set has no {_any_of(missing)} slide ({text})",
                _missing_class_fix(name, missing, counts),
            )
    missing = [c for c in classes if not counts["val"][c]]
    if not counts["val"] or not missing:
        return []
    return [
        f"validation has no {_any_of(missing)} slide ({text}): its AUC is undefined, so early "
        "stopping and the checkpoint kept go by validation loss alone; test metrics are "
        f"unaffected. To avoid it: {_missing_class_fix('val', missing, counts)}"
    ]


def write_splits(rows: Sequence[SplitRow], path: str | Path) -> None:
    """Write `splits.tsv` atomically: columns slide_id, patient, label, split, excluded (the
    reason, for split `excluded`); sorted by slide."""
    lines = ["\t".join(COLUMNS)]
    lines += [
        "\t".join((r.slide_id, r.patient, r.label, r.split, r.excluded))
        for r in sorted(rows, key=lambda r: r.slide_id)
    ]
    write_text_atomic(path, "\n".join(lines) + "\n")


def read_splits(path: str | Path) -> list[SplitRow]:
    """Read a `splits.tsv` written by `write_splits` (rows in file order)."""
    path = Path(path)
    fix = "delete the file and re-run the pipeline so the splits are made again"
    if not path.is_file():
        raise SpanError(path, "splits file not found", "run the pipeline's split step first")
    with path.open(newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None or [c.strip() for c in header] != list(COLUMNS):
            raise SpanError(path, f"not a splits file of this version (header {header!r})", fix)
        rows: list[SplitRow] = []
        seen: set[str] = set()
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            line = reader.line_num
            if len(row) != len(COLUMNS):
                raise SpanError(path, f"line {line}: expected {len(COLUMNS)} columns", fix)
            slide_id, split = row[0].strip(), row[3].strip()
            if not slide_id or split not in (*SPLITS, EXCLUDED):
                raise SpanError(path, f"line {line}: bad slide_id or split {split!r}", fix)
            if slide_id in seen:
                raise SpanError(path, f"line {line}: duplicate slide_id {slide_id!r}", fix)
            seen.add(slide_id)
            rows.append(SplitRow(slide_id, row[1].strip(), row[2].strip(), split, row[4].strip()))
    return rows
