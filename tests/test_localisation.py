"""The localisation benchmark's truth and measure: the demo's tumour truth written beside each
slide and aligned with the patch grid, a spatial cohort's rare-type patches aligned with its
features, and the per-slide AUC."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from span.data.samplesheet import load_sample_sheet
from span.errors import SpanError
from span.features.feature_file import read_feature_file
from span.inference.localisation import SlideTruth, slide_auc, spatial_truths
from span.synthetic.demo import demo_slide_options, make_demo_slide
from span.synthetic.feature_cohort import CohortSpec, write_cohort
from span.synthetic.layouts import RARE
from span.synthetic.truth import (
    TRUTH_DOWNSAMPLE,
    patch_tumour_fraction,
    read_truth,
    truth_path,
    write_truth,
)


def test_truth_round_trip_gives_each_blocks_tumour_fraction(tmp_path: Path) -> None:
    s = TRUTH_DOWNSAMPLE
    mask = np.zeros((3 * s + 5, 2 * s), bool)  # the last block row is cut: 5 of 16 rows
    mask[:s, :s] = True  # block (0, 0) whole
    mask[s : s + s // 4, s:] = True  # block (1, 1) a quarter
    mask[3 * s :, :s] = True  # block (3, 0): 5 rows of a padded 16
    write_truth(tmp_path / "t.truth.png", mask)
    truth = read_truth(tmp_path / "t.truth.png")
    expected = np.zeros((4, 2))
    expected[0, 0], expected[1, 1], expected[3, 0] = 1.0, 0.25, 5 / 16
    np.testing.assert_allclose(truth, expected, atol=0.5 / 255)
    # A patch of 2 x 2 blocks at level-0 (0, 0) covers blocks (0..1, 0..1).
    got = patch_tumour_fraction(truth, np.array([[0, 0], [0, 2 * s]]), 2 * s)
    np.testing.assert_allclose(got, [(1 + 0.25) / 4, 5 / 16 / 4], atol=1 / 255)


def test_unreadable_truth_is_one_line_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "demo_00.truth.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(SpanError, match=r"demo_00\.truth\.png: no readable demo truth"):
        read_truth(bad)


def test_a_demo_slides_truth_lies_beside_it_aligned_with_the_patch_grid(tmp_path: Path) -> None:
    """Arranged tumour fills whole patch cells of the patching grid: on the grid's patches
    every fraction is 0 or most of the patch, never a sliver of a neighbour's."""
    sid = next(
        f"demo_{i:02d}" for i in range(40) if demo_slide_options(f"demo_{i:02d}")["mpp"] == 0.5
    )
    info = make_demo_slide(tmp_path / f"{sid}.tiff", sid, "clumped")
    truth = read_truth(truth_path(tmp_path / f"{sid}.tiff"))
    assert truth_path(tmp_path / f"{sid}.tiff") == tmp_path / f"{sid}.truth.png"
    patch = 224  # 112 um at 0.5 um/px
    xs, ys = np.meshgrid(
        np.arange(0, info["width_px"] - patch + 1, patch),
        np.arange(0, info["height_px"] - patch + 1, patch),
    )
    coords = np.stack([xs.ravel(), ys.ravel()], 1)
    fraction = patch_tumour_fraction(truth, coords, patch)
    tumour = fraction[fraction > 0]
    assert len(tumour) >= 4 and tumour.min() > 0.15  # whole nests, no slivers
    shifted = patch_tumour_fraction(truth, coords + patch // 2, patch)  # half a cell off
    assert (shifted[shifted > 0] < 0.15).any()


def test_slide_auc_ranks_deciding_patches_against_plain_ones() -> None:
    positive = np.array([True, True, False, False, False])
    negative = np.array([False, False, True, True, False])  # the last patch is left out
    truth = SlideTruth("s", "clumped", Path("s.h5"), positive, negative)
    assert slide_auc(np.array([5.0, 4.0, 1.0, 2.0, 99.0]), truth) == 1.0
    assert slide_auc(np.array([1.0, 2.0, 4.0, 5.0, -9.0]), truth) == 0.0
    assert slide_auc(np.array([3.0, 1.0, 2.0, 2.0, 0.0]), truth) == 0.5
    none = SlideTruth("s", "clumped", Path("s.h5"), positive, np.zeros(5, bool))
    assert slide_auc(np.zeros(5), none) is None


def test_spatial_truth_is_the_rare_type_aligned_with_the_feature_rows(tmp_path: Path) -> None:
    spec = CohortSpec("clumped", slides=4, feature_dim=16, seed=2)
    sheet = write_cohort(spec, tmp_path)
    samples = load_sample_sheet(sheet, list(spec.classes))
    truths = spatial_truths(tmp_path, samples)
    layouts = np.load(tmp_path / "layouts.npz")
    for truth in truths:
        fs = read_feature_file(truth.features)
        types = layouts[truth.slide_id]
        assert len(truth.positive) == len(fs) == len(types)
        np.testing.assert_array_equal(truth.positive, types == RARE)
        np.testing.assert_array_equal(truth.negative, types != RARE)
        # The rare type's mean lies apart: the deciding rows are the ones that look rare.
        rare_mean = fs.features[truth.positive].mean(0)
        assert np.linalg.norm(rare_mean - fs.features[truth.negative].mean(0)) > 1.0
