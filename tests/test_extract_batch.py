"""The feature stage for many slides in one process: the same features as one slide at a time,
reuse of finished slides, exclusion of unreadable ones, and resuming a killed batch at the slide
and chunk where it stopped."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from span.atomic import disk_full_error
from span.batches import SlideStore, read_manifest
from span.errors import SpanError
from span.features.encoders import build_encoder
from span.features.extract import ExtractOptions, extract_slide, partial_path
from span.features.extract_batch import run_extract_batch
from span.features.feature_file import read_feature_file
from span.slides.patch_file import PatchSet, write_patch_file
from span.slides.patching import PatchingParams, run_patching
from span.slides.tiff_writer import write_pyramidal_tiff
from span.synthetic.tissue import render_tissue

PATCHES = 12  # per slide
ENOSPC = OSError(errno.ENOSPC, "Can't synchronously write data (errno = 28)")


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """Three small slides (id, slide file, patch file of their first PATCHES patches)."""
    root = tmp_path_factory.mktemp("batch")
    out = []
    for i in range(3):
        image, *_ = render_tissue(900, 900, 0.5, tumour=True, seed=20 + i, dust=False)
        slide = write_pyramidal_tiff(root / f"s{i}.tiff", image, 0.5, downsamples=(1, 4))
        full = run_patching(slide, f"s{i}", root / "all.h5", root / "qc.png", PatchingParams())
        n = min(PATCHES, len(full))
        subset = PatchSet(full.coords[:n], full.grid[:n], full.tissue_fraction[:n], full.attrs)
        write_patch_file(root / f"s{i}.h5", subset)
        out.append((f"s{i}", slide, root / f"s{i}.h5"))
    return out


@pytest.fixture(scope="module")
def encoder():
    return build_encoder("resnet18", "layer4", "random")


OPTIONS = ExtractOptions(batch_size=4, num_workers=0, flush_every=4)


def test_a_batch_gives_each_slide_the_features_it_gets_alone(slides, encoder, tmp_path):
    store = SlideStore(tmp_path / ".store")
    outcomes = run_extract_batch(slides, store, tmp_path / "m.tsv", encoder, OPTIONS)
    assert [(o.slide_id, o.status) for o in outcomes] == [(s, "made") for s, *_ in slides]
    assert [o.slide_id for o in read_manifest(tmp_path / "m.tsv")] == [s for s, *_ in slides]
    for slide_id, slide, patches in slides:
        alone = tmp_path / f"{slide_id}-alone.h5"
        extract_slide(slide, patches, alone, encoder, OPTIONS)
        a, b = read_feature_file(store.path(slide_id, ".h5")), read_feature_file(alone)
        np.testing.assert_array_equal(a.features, b.features)
        np.testing.assert_array_equal(a.grid, b.grid)
        assert a.attrs["slide_id"] == slide_id
    assert not list(store.folder.glob(".*"))  # no partial or temporary file left


def test_tile_workers_read_across_slides_with_the_same_result(slides, encoder, tmp_path):
    one, two = SlideStore(tmp_path / "a"), SlideStore(tmp_path / "b")
    run_extract_batch(slides, one, tmp_path / "a.tsv", encoder, OPTIONS)
    workers = ExtractOptions(batch_size=5, num_workers=2, flush_every=5)
    run_extract_batch(slides, two, tmp_path / "b.tsv", encoder, workers)
    for slide_id, *_ in slides:
        a = read_feature_file(one.path(slide_id, ".h5")).features
        np.testing.assert_allclose(a, read_feature_file(two.path(slide_id, ".h5")).features, 1e-5)


def test_a_new_slide_in_the_batch_is_the_only_one_encoded(slides, encoder, tmp_path):
    store = SlideStore(tmp_path / ".store")
    run_extract_batch(slides[:2], store, tmp_path / "m1.tsv", encoder, OPTIONS)
    before = {s: store.path(s, ".h5").stat().st_ino for s, *_ in slides[:2]}
    outcomes = run_extract_batch(slides, store, tmp_path / "m2.tsv", encoder, OPTIONS)
    assert [o.status for o in outcomes] == ["reused", "reused", "made"]
    assert before == {s: store.path(s, ".h5").stat().st_ino for s, *_ in slides[:2]}


def test_an_unreadable_slide_is_excluded_unless_strict(slides, encoder, tmp_path):
    broken = tmp_path / "broken.tiff"
    broken.write_bytes(b"II*\x00" + bytes(300))
    batch = [slides[0], ("broken", broken, slides[1][2])]
    store = SlideStore(tmp_path / ".store")
    outcomes = run_extract_batch(batch, store, tmp_path / "m.tsv", encoder, OPTIONS)
    assert [o.status for o in outcomes] == ["made", "excluded"]
    excluded = read_feature_file(store.path("broken", ".h5"))
    assert len(excluded) == 0 and excluded.attrs["error"]  # why, and the fix: for the QC summary
    with pytest.raises(SpanError):
        run_extract_batch(batch, store, tmp_path / "m2.tsv", encoder, OPTIONS, strict=True)


def test_a_killed_batch_resumes_at_the_slide_and_chunk_where_it_stopped(slides, tmp_path):
    store = tmp_path / ".store"
    cmd = [sys.executable, "-m", "span", "extract-batch", "--slide-ids"]
    cmd += [s for s, *_ in slides] + ["--slides"] + [str(p) for _, p, _ in slides]
    cmd += ["--patches"] + [str(p) for *_, p in slides]
    cmd += ["--store", str(store), "--manifest", str(tmp_path / "m.tsv")]
    cmd += ["--encoder", "resnet18", "--weights", "random", "--batch-size", "4"]
    cmd += ["--flush-every", "4", "--num-workers", "0", "--threads", "1"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "s1: flushed 4/" in line:  # s0 finished, s1 a chunk in
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "m.tsv").exists()
    partial = partial_path(SlideStore(store).path("s1", ".h5"))
    with h5py.File(partial, "r") as f:
        assert 0 < int(f.attrs["done"]) < PATCHES

    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after" in resumed.stderr
    statuses = [(o.slide_id, o.status) for o in read_manifest(tmp_path / "m.tsv")]
    assert statuses == [("s0", "reused"), ("s1", "made"), ("s2", "made")]

    fresh = tmp_path / "fresh"
    cmd_f = [*cmd[: cmd.index("--store") + 1], str(fresh), *cmd[cmd.index("--store") + 2 :]]
    subprocess.run(cmd_f, check=True, capture_output=True, timeout=300)
    for slide_id, *_ in slides:
        a = read_feature_file(SlideStore(store).path(slide_id, ".h5"))
        b = read_feature_file(SlideStore(fresh).path(slide_id, ".h5"))
        np.testing.assert_array_equal(a.features, b.features)


@pytest.mark.parametrize("seen", ["before the write", "by the write"])
def test_a_full_disk_keeps_the_finished_slides_and_a_rerun_completes(
    slides, encoder, tmp_path, monkeypatch, seen
):
    """The disk fills up at s1's second flush: one line, s0 kept, and the re-run with space
    encodes s1 and s2 only, to the features of an uninterrupted run. Seen by the free-space
    check before the write, s1's partial file is resumed; seen by HDF5's write (a quota, or a
    race with another writer), it is deleted, since HDF5 may have left it inconsistent."""
    flushes = []
    store = SlideStore(tmp_path / ".store")
    partial = partial_path(store.path("s1", ".h5"))

    def full_at_second_flush(path):
        flushes.append(path)
        if flushes.count(partial) == 2:
            raise (disk_full_error(path) if seen == "before the write" else ENOSPC)

    if seen == "before the write":
        monkeypatch.setattr(
            "span.features.extract.require_space", lambda path, _: full_at_second_flush(path)
        )
    else:
        write = h5py.Dataset.__setitem__

        def fill_up(dataset, index, value):
            if dataset.name == "/features":
                full_at_second_flush(Path(dataset.file.filename))
            write(dataset, index, value)

        monkeypatch.setattr(h5py.Dataset, "__setitem__", fill_up)
    with pytest.raises(SpanError) as caught:
        run_extract_batch(slides, store, tmp_path / "m.tsv", encoder, OPTIONS)
    assert str(caught.value).startswith(f"{partial}: disk full while writing (No space left")
    assert str(caught.value).endswith("and re-run; finished slides and results are kept")
    assert store.path("s0", ".h5").is_file() and (store.folder / "s0.key").is_file()
    assert partial.exists() == (seen == "before the write")
    assert not store.path("s1", ".h5").exists() and not (store.folder / "s1.key").exists()

    monkeypatch.undo()
    outcomes = run_extract_batch(slides, store, tmp_path / "m.tsv", encoder, OPTIONS)
    assert [o.status for o in outcomes] == ["reused", "made", "made"]
    fresh = SlideStore(tmp_path / "fresh")
    run_extract_batch(slides, fresh, tmp_path / "fresh.tsv", encoder, OPTIONS)
    for slide_id, *_ in slides:
        a = read_feature_file(store.path(slide_id, ".h5")).features
        np.testing.assert_array_equal(a, read_feature_file(fresh.path(slide_id, ".h5")).features)


def test_a_damaged_features_file_is_re_extracted_alone(slides, encoder, tmp_path):
    """Damaged in place after extraction (a link of the store's file, as the workflow makes
    it): its read drops it from the store, and the batch's re-run encodes it alone."""
    store = SlideStore(tmp_path / "features" / ".store")
    manifest = tmp_path / "features" / "batches" / "extract" / "labelled-1.tsv"
    run_extract_batch(slides, store, manifest, encoder, OPTIONS)
    linked = tmp_path / "features" / "s1.h5"
    os.link(store.path("s1", ".h5"), linked)
    with h5py.File(linked, "r") as f:
        offset = f["features"].id.get_chunk_info(0).byte_offset
    with linked.open("r+b") as f:
        f.seek(offset + 8)
        f.write(b"\xff\xff")
    with pytest.raises(
        SpanError, match=rf"checksum mismatch.*Fix: run snakemake again with --forcerun {manifest} "
    ):
        read_feature_file(linked)
    assert not store.path("s1", ".h5").exists()
    outcomes = run_extract_batch(slides, store, manifest, encoder, OPTIONS)
    assert [o.status for o in outcomes] == ["reused", "made", "reused"]
    assert len(read_feature_file(store.path("s1", ".h5"))) == PATCHES
