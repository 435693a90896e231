"""Importing CLAM, TRIDENT and SPAN features files: layouts, patch size, grid snapping, errors."""

from __future__ import annotations

import logging

import h5py
import numpy as np
import pytest

from span.errors import SpanError
from span.features.feature_file import FeatureSet, read_feature_file, write_feature_file
from span.features.interop import import_features


def write_src(path, features, coords, root_attrs=None, coord_attrs=None):
    """A foreign features file: `features` + `coords` with optional attributes."""
    with h5py.File(path, "w") as f:
        if features is not None:
            f.create_dataset("features", data=features)
        if coords is not None:
            ds = f.create_dataset("coords", data=coords)
            for k, v in (coord_attrs or {}).items():
                ds.attrs[k] = v
        for k, v in (root_attrs or {}).items():
            f.attrs[k] = v
    return path


def row_features(n, dim=8, dtype=np.float32):
    """Features whose first column is the row index, so kept rows can be identified."""
    feats = np.random.default_rng(0).normal(size=(n, dim)).astype(dtype)
    feats[:, 0] = np.arange(n)
    return feats


def run_import(tmp_path, src, **kwargs):
    """Import, check the output reads back identically, and return the FeatureSet."""
    out = tmp_path / "out.h5"
    fs = import_features(src, out, "slide-1", **kwargs)
    back = read_feature_file(out)
    np.testing.assert_array_equal(back.features, fs.features)
    np.testing.assert_array_equal(back.coords, fs.coords)
    np.testing.assert_array_equal(back.grid, fs.grid)
    assert back.attrs["slide_id"] == "slide-1"
    assert back.attrs["warnings"] == fs.attrs["warnings"]
    assert back.attrs["patch_size_level0"] == fs.attrs["patch_size_level0"]
    return fs


def assert_one_line_error(exc_info, src):
    message = str(exc_info.value)
    assert "\n" not in message
    assert str(src) in message


def test_clam_aligned_coords_use_the_argument(tmp_path):
    coords = np.array([[0, 0], [224, 0], [448, 672], [2240, 224]], np.int64)
    feats = row_features(len(coords))
    src = write_src(tmp_path / "clam.h5", feats, coords)
    fs = run_import(tmp_path, src, patch_size_level0=224)
    np.testing.assert_array_equal(fs.features, feats)
    np.testing.assert_array_equal(fs.coords, coords)
    np.testing.assert_array_equal(fs.grid, coords // 224)
    assert fs.attrs["warnings"] == []
    assert fs.attrs["source_layout"] == "clam"
    assert fs.attrs["source"] == str(src)
    assert fs.attrs["encoder"] == "imported"
    assert fs.attrs["layer"] == ""
    assert fs.attrs["weights"] == "unknown"
    assert fs.attrs["patch_size_level0"] == 224
    assert fs.features.dtype == np.float32


def test_encoder_and_layer_options_fill_what_the_file_does_not_record(tmp_path, caplog):
    coords = np.array([[0, 0], [224, 0]], np.int64)
    clam = write_src(tmp_path / "clam.h5", row_features(2), coords)
    fs = run_import(tmp_path, clam, patch_size_level0=224, encoder="resnet50", layer="layer3")
    assert (fs.attrs["encoder"], fs.attrs["layer"]) == ("resnet50", "layer3")
    assert fs.attrs["warnings"] == []
    back = read_feature_file(tmp_path / "out.h5")
    assert (back.attrs["encoder"], back.attrs["layer"]) == ("resnet50", "layer3")

    root = {"encoder": "uni_v1"}  # records its encoder but not its layer
    trident = write_src(tmp_path / "trident.h5", row_features(2), coords, root_attrs=root)
    with caplog.at_level(logging.WARNING, logger="span.features.interop"):
        fs = run_import(tmp_path, trident, patch_size_level0=224, encoder="resnet50", layer="x")
    assert (fs.attrs["encoder"], fs.attrs["layer"]) == ("uni_v1", "x")
    message = (
        "the file records encoder 'uni_v1', kept over 'resnet50' "
        "(features.import_encoder, meant for files that do not record one)"
    )
    assert fs.attrs["warnings"] == [message] and message in caplog.text


def test_import_features_command_passes_encoder_and_layer(tmp_path):
    from span.cli import main

    src = write_src(tmp_path / "clam.h5", row_features(1), np.array([[0, 0]], np.int64))
    out = tmp_path / "out.h5"
    args = ["import-features", "--features", str(src), "--slide-id", "s", "--out", str(out)]
    args += ["--patch-size-level0", "224", "--encoder", "resnet50", "--layer", "layer3"]
    assert main(args) == 0
    back = read_feature_file(out)
    assert (back.attrs["encoder"], back.attrs["layer"]) == ("resnet50", "layer3")


def test_clam_region_grids_are_snapped_with_exact_collision_counts(tmp_path, caplog):
    # Region B (first rows) starts at (500, 301): offset (52, 77) from its cells.
    region_b = [(500 + 224 * i, 301 + 224 * j) for j in range(2) for i in range(2)]
    # Region A starts at (13, 7): offset (13, 7), nearer; it shares cells (2, 1) and (2, 2).
    region_a = [(13 + 224 * i, 7 + 224 * j) for j in range(3) for i in range(3)]
    on_grid = [(0, 1120)]  # already a cell origin: not moved
    coords = np.array(region_b + region_a + on_grid, np.int64)
    n = len(coords)
    src = write_src(tmp_path / "clam.h5", row_features(n), coords)
    with caplog.at_level(logging.WARNING, logger="span.features.interop"):
        fs = run_import(tmp_path, src, patch_size_level0=224)

    message = (
        f"snapped {n - 1} of {n} patches to the global 224-px grid; "
        "2 collided and were dropped (kept the nearest)"
    )
    assert fs.attrs["warnings"] == [message]
    assert message in caplog.text
    assert len(fs) == n - 2
    assert (fs.coords % 224 == 0).all()
    np.testing.assert_array_equal(fs.grid, fs.coords // 224)
    assert len(np.unique(fs.grid, axis=0)) == len(fs)
    # Region B's patches in cells (2, 1) and (2, 2) (rows 0 and 2) lost to region A's.
    kept = fs.features[:, 0].astype(int)
    assert sorted(kept) == [r for r in range(n) if r not in (0, 2)]
    cell_of = dict(zip(map(tuple, fs.grid.tolist()), kept.tolist(), strict=True))
    assert cell_of[(2, 1)] == 4 + 5  # region A, i=2, j=1
    assert cell_of[(2, 2)] == 4 + 8  # region A, i=2, j=2
    assert cell_of[(3, 1)] == 1
    assert cell_of[(0, 5)] == n - 1


def test_snapping_ties_keep_the_lowest_row(tmp_path):
    # All three land in cell (1, 0) at squared distance 100 from its origin.
    coords = np.array([[5000, 5000], [234, 0], [214, 0], [224, 10]], np.int64)
    src = write_src(tmp_path / "clam.h5", row_features(4), coords)
    fs = run_import(tmp_path, src, patch_size_level0=224)
    assert fs.features[:, 0].tolist() == [0, 1]
    np.testing.assert_array_equal(fs.coords, [[4928, 4928], [224, 0]])
    assert fs.attrs["warnings"] == [
        "snapped 4 of 4 patches to the global 224-px grid; "
        "2 collided and were dropped (kept the nearest)"
    ]


def test_clam_patch_attrs_give_the_level0_size(tmp_path):
    coords = np.array([[0, 0], [512, 1024]], np.int64)
    coord_attrs = {
        "patch_size": 256,
        "patch_level": 1,
        "downsample": np.array([2.0, 2.0]),
        "level_dim": np.array([5000, 4000]),
        "name": "slide-1",
    }
    src = write_src(tmp_path / "clam.h5", row_features(2), coords, coord_attrs=coord_attrs)
    fs = run_import(tmp_path, src)
    assert fs.attrs["patch_size_level0"] == 512
    assert fs.attrs["source_layout"] == "clam"
    np.testing.assert_array_equal(fs.grid, [[0, 0], [1, 2]])
    assert fs.attrs["warnings"] == []


def test_clam_patch_level_zero_without_downsample(tmp_path):
    coords = np.array([[256, 0]], np.int64)
    coord_attrs = {"patch_size": 256, "patch_level": 0}
    src = write_src(tmp_path / "clam.h5", row_features(1), coords, coord_attrs=coord_attrs)
    assert run_import(tmp_path, src).attrs["patch_size_level0"] == 256


def test_trident_attr_is_used_and_beats_a_disagreeing_argument(tmp_path, caplog):
    coords = np.array([[0, 0], [448, 896]], np.int64)
    coord_attrs = {
        "patch_size": 224,
        "patch_size_level0": 448,
        "target_magnification": 20,
        "level0_magnification": 40,
        "overlap": 0,
    }
    src = write_src(tmp_path / "trident.h5", row_features(2), coords, coord_attrs=coord_attrs)
    fs = run_import(tmp_path, src)
    assert fs.attrs["patch_size_level0"] == 448
    assert fs.attrs["source_layout"] == "trident"
    assert fs.attrs["warnings"] == []
    np.testing.assert_array_equal(fs.grid, [[0, 0], [1, 2]])

    with caplog.at_level(logging.WARNING, logger="span.features.interop"):
        fs = run_import(tmp_path, src, patch_size_level0=224)
    assert fs.attrs["patch_size_level0"] == 448
    assert len(fs.attrs["warnings"]) == 1
    assert "448" in fs.attrs["warnings"][0] and "224" in fs.attrs["warnings"][0]
    assert "overrides" in caplog.text


def test_trident_root_attr_and_float16_kept(tmp_path):
    coords = np.array([[0, 0], [256, 256]], np.int64)
    feats = row_features(2, dtype=np.float16)
    root = {"patch_size_level0": 256, "encoder": "uni_v1"}
    src = write_src(tmp_path / "trident.h5", feats, coords, root_attrs=root)
    fs = run_import(tmp_path, src, patch_size_level0=256)
    assert fs.features.dtype == np.float16
    assert fs.attrs["encoder"] == "uni_v1"
    assert fs.attrs["source_layout"] == "trident"
    assert fs.attrs["warnings"] == []


def test_leading_one_is_squeezed_other_3d_is_an_error(tmp_path):
    coords = np.array([[0, 0], [224, 0], [0, 224]], np.int64)
    feats = row_features(3, dim=5)
    src = write_src(tmp_path / "a.h5", feats[None], coords)
    fs = run_import(tmp_path, src, patch_size_level0=224)
    np.testing.assert_array_equal(fs.features, feats)
    assert fs.feature_dim == 5

    bad = write_src(tmp_path / "b.h5", np.stack([feats, feats]), coords)
    with pytest.raises(SpanError) as exc_info:
        import_features(bad, tmp_path / "out.h5", "s", 224)
    assert_one_line_error(exc_info, bad)


def test_missing_patch_size_everywhere(tmp_path):
    src = write_src(tmp_path / "clam.h5", row_features(1), np.array([[0, 0]]))
    with pytest.raises(SpanError) as exc_info:
        import_features(src, tmp_path / "out.h5", "s")
    assert "import_patch_size_level0" in str(exc_info.value)
    assert_one_line_error(exc_info, src)


@pytest.mark.parametrize(
    "case",
    ["missing coords", "missing features", "nan", "inf", "length mismatch", "negative coords"],
)
def test_bad_inputs_are_one_line_errors(tmp_path, case):
    feats = row_features(3)
    coords = np.array([[0, 0], [224, 0], [0, 224]], np.int64)
    if case == "missing coords":
        coords = None
    elif case == "missing features":
        feats = None
    elif case == "nan":
        feats[1, 2] = np.nan
    elif case == "inf":
        feats[2, 0] = np.inf
    elif case == "length mismatch":
        coords = coords[:2]
    elif case == "negative coords":
        coords[1, 0] = -224
    src = write_src(tmp_path / "bad.h5", feats, coords)
    with pytest.raises(SpanError) as exc_info:
        import_features(src, tmp_path / "out.h5", "s", 224)
    assert_one_line_error(exc_info, src)
    assert not (tmp_path / "out.h5").exists()


def test_empty_file_is_allowed(tmp_path):
    src = write_src(tmp_path / "empty.h5", np.zeros((0, 16), np.float32), np.zeros((0, 2)))
    fs = run_import(tmp_path, src, patch_size_level0=224)
    assert len(fs) == 0
    assert fs.feature_dim == 16
    assert fs.attrs["warnings"] == ["no patches"]


def test_own_layout_round_trips(tmp_path):
    coords = np.array([[0, 0], [256, 512], [768, 256]], np.int64)
    feats = row_features(3, dim=6)
    attrs = {
        "slide_id": "original",
        "encoder": "uni",
        "layer": "last",
        "weights": "sha256:abc",
        "patch_size_level0": 256,
        "target_mpp": 0.5,
        "mpp_source": "tiff",
        "warnings": ["slide resolution guessed"],
    }
    src = tmp_path / "ours.h5"
    bad = np.array([[512, 0]], np.int64)  # a tile left out of the source's rows
    write_feature_file(src, FeatureSet(feats, coords, coords // 256, bad, attrs))
    fs = run_import(tmp_path, src)
    np.testing.assert_array_equal(fs.features, feats)
    np.testing.assert_array_equal(fs.coords, coords)
    np.testing.assert_array_equal(fs.grid, coords // 256)
    np.testing.assert_array_equal(fs.bad_tiles, bad)
    assert fs.attrs["source_layout"] == "span"
    assert fs.attrs["slide_id"] == "slide-1"
    for key in ("encoder", "layer", "weights", "patch_size_level0", "target_mpp", "mpp_source"):
        assert fs.attrs[key] == attrs[key]
    assert fs.attrs["warnings"] == ["slide resolution guessed"]
    back = read_feature_file(tmp_path / "out.h5")
    assert back.attrs["encoder"] == "uni"
    np.testing.assert_array_equal(back.bad_tiles, bad)
