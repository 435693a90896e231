"""Many slides per job: how the workflow groups slides into batch jobs, and the store where a
batch keeps each slide's finished files.

A batch job (one process for many slides: start-up and model building paid once) writes each
slide's files into a hidden store folder, under a key of everything they depend on. The
workflow's per-slide rule then hard-links the stored file to the slide's own output path, so
Snakemake still knows every slide's output. A re-run of a batch (after a kill, or because a slide
joined it) reuses each slide whose key still matches instead of recomputing it. A stored file
shares its inode with the output: it costs no disk space, and it survives Snakemake deleting a
job's outputs before re-running it.

Standard library only: the Snakefile imports this module at parse time.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from span.atomic import write_text_atomic
from span.errors import SpanError
from span.outputs import STORE_DIR

log = logging.getLogger(__name__)


def slide_batches(
    slide_ids: Iterable[str], labelled: Iterable[str], per_job: int, prefix: str = ""
) -> dict[str, list[str]]:
    """Batch name -> slide ids. Labelled and unlabelled slides never share a batch (so a new
    unlabelled slide re-runs nothing that training reads); each group is sorted by id and cut
    into ceil(n / per_job) contiguous batches of sizes differing by at most one."""
    if per_job < 1:
        raise ValueError("slides per job must be >= 1")
    labelled = set(labelled)
    ids = sorted(set(slide_ids))
    batches: dict[str, list[str]] = {}
    for group in ("labelled", "unlabelled"):
        members = [s for s in ids if (s in labelled) == (group == "labelled")]
        count = math.ceil(len(members) / per_job)
        for i in range(count):
            lo, hi = len(members) * i // count, len(members) * (i + 1) // count
            batches[f"{prefix}{group}-{i + 1}"] = members[lo:hi]
    return batches


def batch_of(batches: Mapping[str, list[str]]) -> dict[str, str]:
    """Slide id -> the name of its batch."""
    return {slide: name for name, slides in batches.items() for slide in slides}


def key_of(*parts: object) -> str:
    """A stable key (hex digest) of JSON-serialisable parts: what a stored result depends on."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()


def file_identity(path: str | Path) -> list:
    """A file as a key part: resolved path, size and modification time (a replaced or edited
    slide gets a new key)."""
    path = Path(path)
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


class SlideStore:
    """The finished files of one stage's batch jobs: `<folder>/.store/<slide><suffix>`, each
    slide's files valid while `<slide>.key` holds the key they were made under."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def path(self, slide_id: str, suffix: str) -> Path:
        """Where the slide's file with this suffix (e.g. '.h5') is kept."""
        return self.folder / f"{slide_id}{suffix}"

    def _key_path(self, slide_id: str) -> Path:
        return self.folder / f"{slide_id}.key"

    def lookup(self, slide_id: str, key: str, suffixes: Iterable[str]) -> str | None:
        """The status the slide's files were stored with ('made' or 'excluded') if they were
        made under `key` and are all there, else None."""
        try:
            stored_key, status = self._key_path(slide_id).read_text().split()
        except (OSError, ValueError):
            return None
        if stored_key != key or not all(self.path(slide_id, s).is_file() for s in suffixes):
            return None
        return status

    def invalidate(self, slide_id: str) -> None:
        """Forget the slide's key before its files are replaced (a kill mid-way leaves no key
        that vouches for a mix of old and new files)."""
        self._key_path(slide_id).unlink(missing_ok=True)

    def commit(self, slide_id: str, key: str, status: str, files: Mapping[str, Path]) -> None:
        """Move finished files (suffix -> a file in the store folder) into place, then record
        the key and status."""
        for suffix, tmp in files.items():
            os.replace(tmp, self.path(slide_id, suffix))
        write_text_atomic(self._key_path(slide_id), f"{key}\n{status}\n")

    def temp_path(self, slide_id: str, suffix: str) -> Path:
        """A file name in the store folder to write a slide's file under before `commit`."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return self.folder / f".{slide_id}.tmp-{os.getpid()}{suffix}"


def forget_damaged(path: str | Path) -> list[Path]:
    """The manifests of the batch jobs that made `path`, found damaged, if it is a slide's file
    of a stage whose batch jobs keep their files in `.store/` beside it (`batches/<rule>/*.tsv`
    beside it list its slide); else []. Its stored copy, when the same file, and key are dropped
    so that re-running those jobs remakes this slide alone (a stored copy of its own is intact:
    the re-run links it again); the caller names them to force that re-run (Snakemake redoes
    nothing for a file damaged behind its back, nor for a missing intermediate file)."""
    path = Path(path)
    slide = path.stem
    manifests = [
        m
        for m in sorted((path.parent / "batches").glob("*/*.tsv"))
        if any(o.slide_id == slide for o in read_manifest(m))
    ]
    store = SlideStore(path.parent / STORE_DIR)
    stored = store.path(slide, path.suffix)
    if manifests and (not stored.exists() or os.path.samefile(path, stored)):
        store.invalidate(slide)
        stored.unlink(missing_ok=True)
    return manifests


#: Columns of a batch manifest (the batch job's output).
MANIFEST_COLUMNS = ("slide_id", "status", "seconds", "detail")


@dataclass(frozen=True)
class SlideOutcome:
    """What a batch did with one slide, in how many seconds: `made`, `excluded` (a slide-level
    error, recorded in its files and in `detail`) or `reused` (its stored files still matched;
    `detail` says whether they were made or excluded)."""

    slide_id: str
    status: str
    seconds: float
    detail: str = ""


def write_manifest(path: str | Path, outcomes: Iterable[SlideOutcome]) -> None:
    """The batch job's output: one row per slide (TSV, written atomically)."""
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for o in outcomes:
        writer.writerow([o.slide_id, o.status, f"{o.seconds:.3f}", o.detail.replace("\t", " ")])
    write_text_atomic(path, buf.getvalue())


def read_manifest(path: str | Path) -> list[SlideOutcome]:
    """The rows of a batch manifest."""
    with Path(path).open(newline="") as f:
        return [
            SlideOutcome(r["slide_id"], r["status"], float(r["seconds"]), r["detail"])
            for r in csv.DictReader(f, delimiter="\t")
        ]


@dataclass(frozen=True)
class BatchItem:
    """One slide of a batch: the key of its inputs, `make` (writes its files, given a path per
    suffix, and returns the manifest's detail; a SpanError means the slide itself is at fault)
    and `exclude` (writes the files of a slide that failed, recording the error; None: an
    error always stops the batch)."""

    slide_id: str
    key: str
    make: Callable[[dict[str, Path]], str]
    exclude: Callable[[dict[str, Path], SpanError], None] | None = None


def run_batch(
    items: Sequence[BatchItem],
    store: SlideStore,
    manifest: str | Path,
    suffixes: Sequence[str],
    strict: bool = False,
) -> list[SlideOutcome]:
    """Make each slide's files into `store`, reusing the ones stored under the same key, and
    write the manifest. A slide whose `make` raises a SpanError is excluded (`exclude` writes
    its files) unless `strict`, where the error stops the batch; the slides before it are kept."""
    outcomes = []
    for item in items:
        t0 = time.perf_counter()
        stored = store.lookup(item.slide_id, item.key, suffixes)
        if stored == "made" or (stored == "excluded" and not strict):
            outcomes.append(SlideOutcome(item.slide_id, "reused", time.perf_counter() - t0, stored))
            continue
        store.invalidate(item.slide_id)
        files = {suffix: store.temp_path(item.slide_id, suffix) for suffix in suffixes}
        try:
            try:
                status, detail = "made", item.make(files)
            except SpanError as exc:
                if strict or item.exclude is None:
                    raise
                log.error("%s: excluded: %s", item.slide_id, exc)
                item.exclude(files, exc)
                status, detail = "excluded", str(exc)
            store.commit(item.slide_id, item.key, status, files)
        finally:
            for tmp in files.values():  # left only when the slide failed
                tmp.unlink(missing_ok=True)
        outcomes.append(SlideOutcome(item.slide_id, status, time.perf_counter() - t0, detail))
        log.info("%s: %s (%s) in %.2f s", item.slide_id, status, detail, outcomes[-1].seconds)
    write_manifest(manifest, outcomes)
    return outcomes


def add_batch_arguments(parser: argparse.ArgumentParser, *inputs: str) -> None:
    """The flags every batch command shares: its slides (ids, and one file of each kind in
    `inputs` per slide, in the same order), the store folder and the manifest to write."""
    parser.add_argument("--slide-ids", nargs="+", required=True, metavar="ID")
    for name in inputs:
        parser.add_argument(
            f"--{name}", nargs="+", required=True, metavar="VALUE", help="one per slide id"
        )
    parser.add_argument("--store", required=True, help=f"store folder ({STORE_DIR}/ of a stage)")
    parser.add_argument("--manifest", required=True, help="batch manifest TSV to write")


def batch_rows(args: argparse.Namespace, *inputs: str) -> list[tuple[str, ...]]:
    """(slide id, input file, ...) rows of a batch command; a length mismatch is a usage error."""
    columns = [args.slide_ids] + [getattr(args, name.replace("-", "_")) for name in inputs]
    for name, column in zip(inputs, columns[1:], strict=True):
        if len(column) != len(args.slide_ids):
            args.parser.error(
                f"--slide-ids has {len(args.slide_ids)} entries, --{name} {len(column)}"
            )
    return list(zip(*columns, strict=True))
