"""The sample sheet (TSV): one row per slide, validated before any job runs.

Columns: `slide_id`, `path` (may be empty when `features` is given), `label` (empty =
inference only), optional `features`, `patient` and `split` (train/val/test). Text is UTF-8
(a BOM is fine) or UTF-16 with a BOM, as Excel writes. Only the standard library is used: the
Snakefile imports this module at parse time.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from span.errors import SpanError

REQUIRED_COLUMNS = ("slide_id", "path", "label")
OPTIONAL_COLUMNS = ("features", "patient", "split")
SPLITS = ("train", "val", "test")
SLIDE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Sample:
    """One validated sample-sheet row."""

    slide_id: str
    path: str
    label: str
    features: str = ""
    patient: str = ""
    split: str = ""

    @property
    def needs_patching(self) -> bool:
        """Slides with precomputed features skip patching and extraction."""
        return not self.features


def _row_problems(line: int, row: dict, classes: Sequence[str]) -> list[str]:
    problems = []
    sid = row["slide_id"]
    if not SLIDE_ID.match(sid) or sid.endswith("."):
        problems.append(
            f"line {line}: slide_id {sid!r} is not safe as a file name "
            "(use letters, digits, '-', '_', '.'; start with a letter or digit)"
        )
    if not row["path"] and not row.get("features"):
        problems.append(f"line {line}: slide {sid!r} has neither a path nor a features file")
    if row["label"] and row["label"] not in classes:
        problems.append(
            f"line {line}: label {row['label']!r} of {sid!r} is not one of the config's "
            f"classes {list(classes)} (fix the label or add the class)"
        )
    if row.get("split") and row["split"] not in SPLITS:
        problems.append(f"line {line}: split {row['split']!r} of {sid!r} is not one of {SPLITS}")
    return problems


def _encoding(path: Path) -> str:
    """UTF-16 when the file starts with its BOM (Excel's Unicode Text), else UTF-8 with an
    optional BOM (Excel's CSV UTF-8): a BOM must not end up in the first column's name."""
    with path.open("rb") as f:
        return "utf-16" if f.read(2) in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"


def load_sample_sheet(path: str | Path, classes: Sequence[str]) -> list[Sample]:
    """Read and validate the sheet; every problem is reported at once in one SpanError."""
    path = Path(path)
    if not path.is_file():
        raise SpanError(path, "sample sheet not found", "set `samples:` in the config to a TSV")
    try:
        with path.open(newline="", encoding=_encoding(path)) as f:
            reader = csv.DictReader(f, delimiter="\t")
            columns = [c.strip() for c in reader.fieldnames or []]
            missing = [c for c in REQUIRED_COLUMNS if c not in columns]
            if missing:
                found = ", ".join(map(ascii, columns)) or "none"  # shows invisible characters
                raise SpanError(
                    path,
                    f"missing column(s) {', '.join(missing)} (found: {found})",
                    "the sheet must be tab-separated with a header slide_id, path, label",
                )
            known = set(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)
            rows = []
            for row in reader:
                clean = {
                    k.strip(): (v or "").strip() for k, v in row.items() if k and k.strip() in known
                }
                if any(clean.values()):
                    rows.append((reader.line_num, clean))
    except UnicodeDecodeError as exc:
        raise SpanError(
            path,
            f"not UTF-8 text (byte {exc.object[exc.start]:#04x}; Excel's Text (Tab delimited) "
            "uses the Windows code page)",
            "save it as UTF-8 text, or from Excel as Unicode Text (tab-separated UTF-16)",
        ) from exc
    except PermissionError as exc:
        raise SpanError(path, "sample sheet not readable", "check its permissions") from exc
    problems: list[str] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        problems += _row_problems(line, row, classes)
        sid = row["slide_id"]
        if sid in seen:
            problems.append(f"line {line}: duplicate slide_id {sid!r} (first on line {seen[sid]})")
        seen.setdefault(sid, line)
    if not rows:
        problems.append("no slides")
    if problems:
        raise SpanError(path, "invalid sample sheet: " + "; ".join(problems), "edit the sheet")
    return [Sample(**row) for _, row in rows]


def missing_inputs(
    samples: Iterable[Sample], producible: Callable[[str, str], bool] = lambda path, sid: False
) -> list[str]:
    """Slide and feature files that are not readable files (missing, a directory, no read
    permission) and are not made by the workflow, each with what is wrong.

    `producible(path, slide_id)` says whether a rule of the workflow makes that file.
    """
    missing = []
    for s in samples:
        for kind, p in (("slide", s.path if s.needs_patching else ""), ("features", s.features)):
            if not p or producible(p, s.slide_id):
                continue
            path = Path(p)
            if path.is_dir():
                why = "a directory, not a file"
            elif not path.exists():
                why = "does not exist"
            elif not os.access(path, os.R_OK):
                why = "not readable: check its permissions"
            else:
                continue
            missing.append(f"{s.slide_id}: {kind} file {p} ({why})")
    return missing
