"""The feature stage: shapes and attributes, invariance to batching/workers/resume, weights,
faulty tiles."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import openslide
import pytest
import tifffile
import torch

from span.errors import SpanError
from span.features.encoders import IMAGENET_MEAN, IMAGENET_STD, build_encoder
from span.features.extract import ExtractOptions, PartialFeatures, extract_slide, partial_path
from span.features.feature_file import read_feature_file
from span.slides.patch_file import PatchSet, read_patch_file, write_patch_file
from span.slides.patching import PatchingParams, run_patching
from span.slides.tiff_writer import write_pyramidal_tiff
from span.synthetic.tissue import render_tissue

N_PATCHES = 24


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory):
    """A tumour slide at 20x and a patch file holding its first N_PATCHES patches."""
    root = tmp_path_factory.mktemp("features")
    image, *_ = render_tissue(1300, 1300, 0.5, tumour=True, seed=11, dust=False)
    slide = write_pyramidal_tiff(root / "slide.tiff", image, 0.5, downsamples=(1, 4, 16))
    full = run_patching(slide, "small", root / "all.h5", root / "qc.png", PatchingParams())
    assert len(full) >= N_PATCHES
    subset = PatchSet(
        full.coords[:N_PATCHES],
        full.grid[:N_PATCHES],
        full.tissue_fraction[:N_PATCHES],
        full.attrs,
    )
    write_patch_file(root / "patches.h5", subset)
    return slide, root / "patches.h5"


@pytest.fixture(scope="module")
def random_encoder():
    return build_encoder("resnet50", "layer4", "random")


@pytest.fixture(scope="module")
def reference(small_slide, random_encoder, tmp_path_factory):
    """Features from an uninterrupted in-process run (batch 8, no workers)."""
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    extract_slide(*small_slide, out, random_encoder, ExtractOptions(batch_size=8, num_workers=0))
    return read_feature_file(out)


def test_shapes_and_attributes(small_slide, reference):
    _, patch_file = small_slide
    patches = read_patch_file(patch_file)
    assert reference.features.shape == (N_PATCHES, 2048)
    assert reference.features.dtype == np.float32
    np.testing.assert_array_equal(reference.coords, patches.coords)
    np.testing.assert_array_equal(reference.grid, patches.grid)
    assert reference.bad_tiles.shape == (0, 2)
    assert (reference.attrs["tiles_total"], reference.attrs["bad_tile_share"]) == (N_PATCHES, 0.0)
    a = reference.attrs
    assert (a["encoder"], a["layer"], a["feature_dim"], a["weights"]) == (
        "resnet50",
        "layer4",
        2048,
        "random",
    )
    for key in ("patch_size_level0", "patch_level", "patch_size", "slide_mpp", "mpp_source"):
        assert a[key] == patches.attrs[key]
    assert np.isfinite(reference.features).all() and reference.features.std() > 0


def test_batch_size_and_workers_do_not_change_features(
    small_slide, random_encoder, reference, tmp_path
):
    out = tmp_path / "f.h5"
    extract_slide(*small_slide, out, random_encoder, ExtractOptions(batch_size=5, num_workers=2))
    other = read_feature_file(out).features
    np.testing.assert_allclose(other, reference.features, rtol=1e-4, atol=1e-4)


def test_slide_without_patches_gives_a_valid_empty_features_file(
    small_slide, random_encoder, tmp_path
):
    """A slide whose patching found no tissue yields a 0-row features file (training then
    excludes it) instead of failing the cohort's extraction."""
    slide, patch_file = small_slide
    full = read_patch_file(patch_file)
    empty = PatchSet(full.coords[:0], full.grid[:0], full.tissue_fraction[:0], full.attrs)
    write_patch_file(tmp_path / "empty.h5", empty)
    out = tmp_path / "f.h5"
    bad = extract_slide(slide, tmp_path / "empty.h5", out, random_encoder, ExtractOptions())
    stored = read_feature_file(out)
    assert len(bad) == 0 and stored.features.shape == (0, 2048)
    assert stored.coords.shape == (0, 2) and stored.grid.shape == (0, 2)
    assert stored.attrs["encoder"] == "resnet50" and not partial_path(out).exists()


def test_float16_storage(small_slide, random_encoder, reference, tmp_path):
    out = tmp_path / "f16.h5"
    opts = ExtractOptions(batch_size=8, num_workers=0, dtype="float16")
    extract_slide(*small_slide, out, random_encoder, opts)
    half = read_feature_file(out)
    assert half.features.dtype == np.float16 and half.attrs["dtype"] == "float16"
    np.testing.assert_allclose(half.features, reference.features, rtol=2e-3, atol=2e-2)
    bare = read_feature_file(out, with_attrs=False)  # what a training epoch reads
    assert bare.attrs == {} and np.array_equal(bare.features, half.features)
    assert np.array_equal(bare.grid, half.grid) and np.array_equal(bare.coords, half.coords)


def _tiles_by_hand(slide_path: Path, patches: PatchSet) -> torch.Tensor:
    """Independent preprocessing: openslide read, RGB, ImageNet normalisation."""
    tiles = []
    with openslide.OpenSlide(str(slide_path)) as slide:
        for x, y in patches.coords:
            size = (patches.attrs["patch_size"],) * 2
            img = slide.read_region((int(x), int(y)), patches.attrs["patch_level"], size)
            tiles.append(np.asarray(img.convert("RGB"), np.float32) / 255)
    x = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def test_checkpoint_weights_are_really_used(small_slide, tmp_path):
    from torchvision.models import resnet50

    torch.manual_seed(123)
    model = resnet50()
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    encoder = build_encoder("resnet50", "layer3", str(ckpt))
    assert encoder.weights.startswith("sha256:") and len(encoder.weights) == 7 + 64
    out = tmp_path / "f.h5"
    extract_slide(*small_slide, out, encoder, ExtractOptions(batch_size=8, num_workers=0))
    features = read_feature_file(out)
    assert features.features.shape == (N_PATCHES, 1024) and features.attrs["layer"] == "layer3"

    trunk = torch.nn.Sequential(
        model.conv1,
        model.bn1,
        model.relu,
        model.maxpool,
        model.layer1,
        model.layer2,
        model.layer3,
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(1),
    ).eval()
    with torch.inference_mode():
        expected = trunk(_tiles_by_hand(small_slide[0], read_patch_file(small_slide[1])))
    np.testing.assert_allclose(features.features, expected.numpy(), rtol=1e-3, atol=1e-3)

    out_random = tmp_path / "r.h5"
    random3 = build_encoder("resnet50", "layer3", "random")
    extract_slide(*small_slide, out_random, random3, ExtractOptions(batch_size=8, num_workers=0))
    assert not np.allclose(read_feature_file(out_random).features, features.features, atol=1e-2)


def test_bad_checkpoints_are_clear_errors(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(SpanError, match="cannot load checkpoint"):
        build_encoder("resnet50", "layer4", str(junk))
    partial = tmp_path / "partial.pt"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, partial)
    with pytest.raises(SpanError, match="checkpoint lacks"):
        build_encoder("resnet50", "layer4", str(partial))
    with pytest.raises(SpanError, match="unknown encoder"):
        build_encoder("vit_giant", "layer4", "random")
    with pytest.raises(SpanError, match="no output 'layer9'"):
        build_encoder("resnet50", "layer9", "random")


def test_non_finite_features_fail_the_slide(small_slide, tmp_path):
    from torchvision.models import resnet50

    state = resnet50().state_dict()
    state["conv1.weight"][0, 0, 0, 0] = float("nan")
    ckpt = tmp_path / "nan.pt"
    torch.save(state, ckpt)
    encoder = build_encoder("resnet50", "layer3", str(ckpt))
    out = tmp_path / "f.h5"
    with pytest.raises(SpanError, match="non-finite features"):
        extract_slide(*small_slide, out, encoder, ExtractOptions(batch_size=8, num_workers=0))
    assert not out.exists()


def test_killed_extraction_resumes_to_the_same_file(small_slide, tmp_path):
    slide, patch_file = small_slide
    out = tmp_path / "f.h5"
    cmd = [
        sys.executable,
        "-m",
        "span",
        "extract",
        "--slide",
        str(slide),
        "--patches",
        str(patch_file),
        "--out",
        str(out),
        "--weights",
        "random",
        "--batch-size",
        "4",
        "--flush-every",
        "4",
        "--num-workers",
        "0",
        "--threads",
        "1",
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "flushed 4/" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists() and partial_path(out).exists()
    with h5py.File(partial_path(out), "r") as f:
        assert 0 < int(f.attrs["done"]) < N_PATCHES
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after" in resumed.stderr
    assert not partial_path(out).exists()

    uninterrupted = tmp_path / "u.h5"
    cmd_u = [*cmd[: cmd.index("--out") + 1], str(uninterrupted), *cmd[cmd.index("--out") + 2 :]]
    subprocess.run(cmd_u, check=True, capture_output=True, timeout=300)
    a, b = read_feature_file(out), read_feature_file(uninterrupted)
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.coords, b.coords)
    assert a.attrs.keys() == b.attrs.keys()
    for key, value in a.attrs.items():
        np.testing.assert_array_equal(value, b.attrs[key], err_msg=key)


def test_partial_file_from_other_settings_is_discarded(tmp_path):
    path = tmp_path / ".x.partial.h5"
    p = PartialFeatures(path, 10, 4, "float32", "first")
    p.write(0, np.ones((4, 4), np.float32), np.ones(4, bool))
    p.close()
    assert PartialFeatures(path, 10, 4, "float32", "first").done == 4
    assert PartialFeatures(path, 10, 4, "float32", "second").done == 0
    path.write_bytes(b"garbage")
    assert PartialFeatures(path, 10, 4, "float32", "second").done == 0


def _corrupt_level0_tile(slide: Path, tile_index: int) -> None:
    with tifffile.TiffFile(slide) as tif:
        page = tif.pages[0]
        offset, count = page.dataoffsets[tile_index], page.databytecounts[tile_index]
    with slide.open("r+b") as f:
        f.seek(offset + count // 3)
        f.write(os.urandom(count // 2))


def test_unreadable_tiles_are_retried_then_left_out_of_the_bag(
    small_slide, random_encoder, reference, tmp_path, caplog
):
    slide, patch_file = small_slide
    broken = tmp_path / "broken.tiff"
    broken.write_bytes(slide.read_bytes())
    patches = read_patch_file(patch_file)
    # The level-0 tile (256 px) under the first patch's top-left corner.
    x, y = patches.coords[0]
    with tifffile.TiffFile(broken) as tif:
        tiles_across = -(-tif.pages[0].imagewidth // 256)
    _corrupt_level0_tile(broken, int(y // 256) * tiles_across + int(x // 256))
    out = tmp_path / "f.h5"
    with caplog.at_level(logging.WARNING):
        bad = extract_slide(
            broken, patch_file, out, random_encoder, ExtractOptions(batch_size=8, num_workers=0)
        )
    features = read_feature_file(out)
    assert 0 < len(bad) < N_PATCHES
    assert tuple(bad[0]) == (x, y)
    np.testing.assert_array_equal(features.bad_tiles, bad)
    assert features.attrs["tiles_total"] == N_PATCHES
    assert features.attrs["bad_tile_share"] == pytest.approx(len(bad) / N_PATCHES)
    assert any("retrying" in r.message for r in caplog.records)
    assert any("left out of the bag" in r.message for r in caplog.records)
    # The readable patches keep their rows (same features as an undamaged read); the bad ones
    # are gone from features, coords and grid alike.
    good = ~(patches.coords[:, None, :] == bad[None, :, :]).all(-1).any(1)
    assert len(features) == good.sum()
    np.testing.assert_array_equal(features.coords, patches.coords[good])
    np.testing.assert_array_equal(features.grid, patches.grid[good])
    np.testing.assert_allclose(features.features, reference.features[good], rtol=1e-5, atol=1e-5)


def test_transient_read_error_recovers_on_retry(small_slide, monkeypatch):
    from span.features.tiles import SlideTiles

    slide, patch_file = small_slide
    patches = read_patch_file(patch_file)
    tiles = SlideTiles(slide, patches.coords, 0, 224, 224)
    original = SlideTiles.read_tile
    calls = []

    def flaky(self, index, fresh=False):
        calls.append(fresh)
        if not fresh:
            raise openslide.OpenSlideError("transient")
        return original(self, index, fresh)

    monkeypatch.setattr(SlideTiles, "read_tile", flaky)
    tile, index, ok = tiles[3]
    assert ok and index == 3 and calls == [False, True] and tile.shape == (224, 224, 3)


def test_cmu1_layer3(cmu1, tmp_path):
    patch_file = tmp_path / "p.h5"
    run_patching(cmu1, "cmu1", patch_file, tmp_path / "qc.png", PatchingParams())
    out = tmp_path / "f.h5"
    encoder = build_encoder("resnet50", "layer3", "random")
    extract_slide(cmu1, patch_file, out, encoder, ExtractOptions(batch_size=16, num_workers=1))
    features = read_feature_file(out, expected_dim=1024)
    assert features.features.shape == (len(read_patch_file(patch_file)), 1024)
    assert features.attrs["slide_mpp"] == pytest.approx(0.499)
    with pytest.raises(SpanError, match="1024-d but 2048-d"):
        read_feature_file(out, expected_dim=2048)
