"""The cohort's register of slides, `qc/summary.tsv`: one row per slide, and why a slide is
excluded.

Its rule (`exclusion_reason`, applied to a features file by `summary_row`) is the one place that
decides exclusion: a slide that could not be read, no tissue, an imported file without patches,
too many unreadable tiles. The
split applies it to the labelled slides (so training never waits for unlabelled ones) and
training records the result for the report; predictions read the table; so a slide is left out
everywhere for the same stated reason. This module writes and reads the table.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from span.atomic import write_text_atomic
from span.errors import SpanError
from span.h5io import open_h5, read_attrs

COLUMNS = (
    "slide_id",
    "patches",
    "tissue_area_mm2",
    "slide_mpp",
    "mpp_source",
    "patch_size_level0",
    "bad_tiles",
    "bad_tile_share",
    "excluded",
    "warnings",
)

#: Shown next to each exclusion reason: what the user can do about it.
FIXES = {
    "cannot be read": "fix or replace the slide file, or drop its row (the slide is tried again "
    "when its file changes)",
    "no tissue": "check the slide and its QC thumbnail; if it has tissue, lower "
    "patching.min_tissue_fraction or try patching.preset: clam",
    "imported": "re-export this slide's features from the tool that made them",
    "bad tiles": "re-scan or re-export the slide (its file is damaged), or raise "
    "features.max_bad_tile_share",
}


@dataclass(frozen=True)
class Exclusion:
    """A slide left out of the cohort, the reason, and the fix."""

    slide_id: str
    reason: str

    @property
    def fix(self) -> str:
        return next(fix for key, fix in FIXES.items() if self.reason.startswith(key))

    def line(self) -> str:
        """The one line printed for this slide."""
        return f"{self.slide_id}: excluded: {self.reason}. Fix: {self.fix}"


def exclusion_reason(
    total: int, bad: int, imported: bool, max_bad_tile_share: float, error: str = ""
) -> str:
    """Why a slide with `total` patches, `bad` of them unreadable, is excluded ('' = kept);
    `error` is what stopped its patching or extraction, if anything did."""
    if error:
        return f"cannot be read ({error})"
    if total == 0:
        return (
            "imported features file has no patches"
            if imported
            else ("no tissue patches (a blank slide or one smaller than a patch)")
        )
    if bad / total > max_bad_tile_share:
        return (
            f"bad tiles: {bad} of {total} could not be read ({bad / total:.1%}, above "
            f"features.max_bad_tile_share {max_bad_tile_share:.1%})"
        )
    return ""


def summary_row(features_file: str | Path, max_bad_tile_share: float) -> dict:
    """One row from a slide's features file (whose attributes carry its patch file's)."""
    with open_h5(features_file, "re-run feature extraction for this slide") as f:
        rows = int(f["features"].shape[0]) if "features" in f else 0
        bad = int(f["bad_tiles"].shape[0]) if "bad_tiles" in f else 0
        a = read_attrs(f)
    imported = a.get("source", "extracted") != "extracted"
    total = int(a.get("tiles_total", rows + bad))
    reason = exclusion_reason(total, bad, imported, max_bad_tile_share, a.get("error", ""))
    return {
        "slide_id": a.get("slide_id", Path(features_file).stem),
        "patches": rows,
        "tissue_area_mm2": _fixed(a.get("tissue_area_mm2")),
        "slide_mpp": _fixed(a.get("slide_mpp")),
        "mpp_source": a.get("mpp_source", ""),
        "patch_size_level0": a.get("patch_size_level0", ""),
        "bad_tiles": bad,
        "bad_tile_share": f"{bad / total:.4f}" if total else "0.0000",
        "excluded": reason,
        "warnings": "; ".join(str(w) for w in a.get("warnings", [])),
    }


def _fixed(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def write_summary(
    features_files: Sequence[str | Path], out_tsv: str | Path, max_bad_tile_share: float
) -> list[dict]:
    """Write `qc/summary.tsv` atomically and return its rows."""
    rows = [summary_row(path, max_bad_tile_share) for path in features_files]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, COLUMNS, delimiter="\t", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out_tsv, buf.getvalue())
    return rows


def read_summary(path: str | Path) -> list[dict]:
    """The rows of a `qc/summary.tsv` (columns checked)."""
    path = Path(path)
    if not path.is_file():
        raise SpanError(path, "QC summary not found", "run the workflow's qc_summary rule")
    with path.open(newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = sorted(set(COLUMNS) - set(reader.fieldnames or ()))
        if missing:
            raise SpanError(
                path,
                f"not a QC summary of this version (missing {', '.join(missing)})",
                "delete it and re-run the workflow",
            )
        return list(reader)


def read_exclusions(path: str | Path) -> list[Exclusion]:
    """The excluded slides of a `qc/summary.tsv`, in its order."""
    return [Exclusion(r["slide_id"], r["excluded"]) for r in read_summary(path) if r["excluded"]]
