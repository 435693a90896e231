"""A features file cut short or altered after it was written fails on read with one line; for
one that the workflow made, the line names the batch job to re-run (`--forcerun` its manifest),
whose store no longer vouches for the slide, so that it re-extracts that slide alone."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from span.batches import SlideOutcome, SlideStore, write_manifest
from span.errors import SpanError
from span.features.feature_file import FeatureSet, read_feature_file, write_feature_file
from span.outputs import STORE_DIR
from span.training.bags import Bag, inspect_cohort
from tests.test_workflow import small_slide
from tests.workflow_helpers import TINY, base_config, snakemake, write_sheet

ROWS = 1_000


def _features(seed: int) -> FeatureSet:
    rng = np.random.default_rng(seed)
    coords = np.arange(2 * ROWS).reshape(-1, 2)
    attrs = {"encoder": "resnet50", "layer": "layer3"}
    return FeatureSet(rng.random((ROWS, 32), np.float32), coords, coords, np.zeros((0, 2)), attrs)


@pytest.fixture
def cohort(tmp_path) -> Path:
    """A features folder as the workflow leaves it: slides s0, s1 in the store, each linked into
    place, and the manifests of their batch jobs (s0 and s1 in one, s2 in another)."""
    folder = tmp_path / "features" / "resnet50-layer3"
    store = SlideStore(folder / STORE_DIR)
    for i in range(2):
        tmp = store.temp_path(f"s{i}", ".h5")
        write_feature_file(tmp, _features(i))
        store.commit(f"s{i}", f"key{i}", "made", {".h5": tmp})
        os.link(store.path(f"s{i}", ".h5"), folder / f"s{i}.h5")
    manifests = folder / "batches" / "extract"
    write_manifest(
        manifests / "labelled-1.tsv", [SlideOutcome(s, "made", 1.0) for s in ("s0", "s1")]
    )
    write_manifest(manifests / "unlabelled-1.tsv", [SlideOutcome("s2", "made", 1.0)])
    return folder


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # in place: the store's link sees it too


def _flip_a_bit(path: Path) -> None:
    with h5py.File(path, "r") as f:
        offset = f["features"].id.get_chunk_info(1).byte_offset  # a chunk of the features
    with path.open("r+b") as f:
        f.seek(offset + 100)
        byte = f.read(1)[0]
        f.seek(offset + 100)
        f.write(bytes([byte ^ 0x04]))


@pytest.mark.parametrize(
    "damage, reason",
    [
        (_truncate, "unreadable HDF5 file (Unable to synchronously open file (truncated file"),
        (_flip_a_bit, "damaged data, checksum mismatch or cut off (Can't synchronously read"),
    ],
)
def test_a_damaged_features_file_is_one_line_naming_the_batch_job_to_rerun(cohort, damage, reason):
    path = cohort / "s0.h5"
    damage(path)
    with pytest.raises(SpanError) as caught:
        read_feature_file(path)
    manifest = cohort / "batches" / "extract" / "labelled-1.tsv"
    line = str(caught.value)
    assert line.startswith(f"{path}: {reason}"), line
    assert line.endswith(
        f"). Fix: run snakemake again with --forcerun {manifest} (that batch job remakes it alone)"
    )
    store = SlideStore(cohort / STORE_DIR)  # no longer vouches for s0: the batch remakes it
    assert not store.path("s0", ".h5").exists() and store.lookup("s0", "key0", [".h5"]) is None
    assert store.lookup("s1", "key1", [".h5"]) == "made" and manifest.is_file()


def test_training_stops_at_a_truncated_features_file_before_it_starts(cohort):
    _truncate(cohort / "s1.h5")
    bags = [Bag(f"s{i}", cohort / f"s{i}.h5", 0) for i in range(2)]
    with pytest.raises(SpanError, match=r"s1\.h5: unreadable HDF5 file .*Fix: run snakemake"):
        inspect_cohort(bags)


def test_a_damaged_file_of_ones_own_is_named_and_kept(tmp_path):
    """A features file outside the workflow's store (an import's source): not removed."""
    path = tmp_path / "clam" / "s0.h5"
    write_feature_file(path, _features(0))
    _flip_a_bit(path)
    with pytest.raises(SpanError, match=r"checksum mismatch.*Fix: delete it and re-run"):
        read_feature_file(path)
    assert path.is_file()


def test_the_workflow_re_extracts_a_features_file_damaged_after_the_run(tmp_path):
    """Cut short behind Snakemake's back: the QC summary (before any training) stops with the
    file's one line, again at a plain re-run, and the re-run it names re-extracts the slide."""
    small_slide(tmp_path / "a.tiff", 1)
    sheet = write_sheet(tmp_path / "s.tsv", [("a", "a.tiff", "normal")])
    config = base_config(sheet)
    assert snakemake(tmp_path, "--cores", "1", TINY.qc_summary, config=config).returncode == 0
    features = tmp_path / TINY.features("a")
    intact = read_feature_file(features).features
    _truncate(features)
    manifest = TINY.manifest("extract", "labelled-1")
    for _ in range(2):
        res = snakemake(tmp_path, "--cores", "1", TINY.qc_summary, config=config)
        assert res.returncode != 0
        failed = res.stdout[res.stdout.index("1 job(s) failed:") :].splitlines()[1]
        assert failed.startswith(f"  qc_summary: {TINY.features('a')}: unreadable HDF5 file (")
        assert failed.endswith(
            f"Fix: run snakemake again with --forcerun {manifest} (that batch job remakes it alone)"
        )
    res = snakemake(
        tmp_path, "--cores", "1", "--forcerun", manifest, TINY.qc_summary, config=config
    )
    assert res.returncode == 0, res.stdout[-3000:]
    np.testing.assert_array_equal(read_feature_file(features).features, intact)


def test_a_replaced_features_file_keeps_the_intact_stored_copy(cohort):
    """Overwritten by another file (not the store's): the batch's re-run links the store's intact
    copy again, nothing is re-extracted."""
    path = cohort / "s0.h5"
    path.unlink()
    path.write_bytes(b"not an HDF5 file")
    with pytest.raises(SpanError, match=r"unreadable HDF5 file .*--forcerun"):
        read_feature_file(path)
    assert SlideStore(cohort / STORE_DIR).lookup("s0", "key0", [".h5"]) == "made"
