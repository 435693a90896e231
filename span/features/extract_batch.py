"""The feature stage for many slides in one process (the workflow's `extract` jobs).

The encoder is built once and one DataLoader reads all the batch's tiles, so the next slide's
tiles are read while the current one encodes. Each slide's features go to the stage's store
(`span.batches.SlideStore`) under a key of what they depend on; a re-run reuses the slides whose
stored features still match and resumes a half-encoded slide from its last flush.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from span.batches import SlideOutcome, SlideStore, key_of, write_manifest
from span.device import resolve_device
from span.errors import SpanError
from span.features.encoders import Encoder
from span.features.extract import (
    ExtractOptions,
    PartialFeatures,
    SlideJob,
    encode_jobs,
    extraction_key,
    feature_attrs,
    partial_path,
    warn_field,
)
from span.slides.patch_file import PatchSet, read_patch_file
from span.slides.reader import open_slide

log = logging.getLogger(__name__)

FEATURE_SUFFIXES = (".h5",)


def run_extract_batch(
    slides: Sequence[tuple[str, str | Path, str | Path]],
    store: SlideStore,
    manifest: str | Path,
    encoder: Encoder,
    options: ExtractOptions,
    strict: bool = False,
) -> list[SlideOutcome]:
    """Encode many slides (id, slide file, patch file) into `store` and write the manifest. A
    slide that could not be patched, or whose file cannot be opened now, gets an empty features
    file recording the error (excluded by the QC summary) unless `strict`, where the error
    stops the batch."""
    device = resolve_device(options.device)
    store.folder.mkdir(parents=True, exist_ok=True)
    outcomes: dict[str, SlideOutcome] = {}
    jobs: list[SlideJob] = []
    clock = [time.perf_counter()]  # when the last slide finished: per-slide times in the manifest

    def finish(job: SlideJob, status: str = "made") -> np.ndarray:
        tmp = store.temp_path(job.slide_id, ".h5")
        attrs = feature_attrs(job.patches, encoder, options, device)
        bad = job.partial.finalize(tmp, job.patches, attrs)
        store.commit(job.slide_id, keys[job.slide_id], status, {".h5": tmp})
        now = time.perf_counter()
        detail = job.patches.attrs.get("error", f"{len(job.patches)} patches")
        outcomes[job.slide_id] = SlideOutcome(job.slide_id, status, now - clock[0], detail)
        clock[0] = now
        log.info("%s: %s (%s)", job.slide_id, status, detail)
        return bad

    keys: dict[str, str] = {}
    warned = False
    for slide_id, slide_path, patch_file in slides:
        slide_path = Path(slide_path)
        patches = read_patch_file(patch_file)
        try:
            key = key_of(extraction_key(slide_path, patches, encoder, options.dtype))
        except OSError:  # gone since the workflow checked it: open_slide below says why
            key = key_of(str(slide_path), "unreadable")
        keys[slide_id] = key
        stored = store.lookup(slide_id, key, FEATURE_SUFFIXES)
        if stored == "made" or (stored == "excluded" and not strict):
            outcomes[slide_id] = SlideOutcome(slide_id, "reused", 0.0, stored)
            continue
        store.invalidate(slide_id)
        status = "made"
        if "error" in patches.attrs:  # excluded at patching: an empty features file says why
            status = "excluded"
            if strict:
                raise SpanError(slide_path, patches.attrs["error"], "fix the slide file")
        else:
            try:
                open_slide(slide_path).close()
            except SpanError as exc:
                if strict:
                    raise
                log.error("%s: excluded: %s", slide_id, exc)
                patches, status = _without_patches(patches, exc), "excluded"
        if status == "made" and not warned:
            warn_field(encoder, patches)
            warned = True
        partial = PartialFeatures(
            partial_path(store.path(slide_id, ".h5")),
            len(patches),
            encoder.feature_dim,
            options.dtype,
            key,
        )
        jobs.append(
            SlideJob(slide_id, slide_path, patches, partial, lambda j, s=status: finish(j, s))
        )
    try:
        encode_jobs(jobs, encoder, options, device)
    finally:
        for job in jobs:
            job.partial.close()
    rows = [outcomes[slide_id] for slide_id, *_ in slides]
    write_manifest(manifest, rows)
    return rows


def _without_patches(patches: PatchSet, error: SpanError) -> PatchSet:
    """The slide's patch set emptied, with the error that excludes it recorded."""
    attrs = {**patches.attrs, "error": f"{error.reason}; {error.fix}"}
    empty = np.zeros((0, 2), np.int64)
    return PatchSet(empty, empty.astype(np.int32), np.zeros(0), attrs)
