"""Attention heatmaps: each patch's cell painted half-and-half over the slide thumbnail with
the viridis colour of its score's rank; everything else stays the thumbnail."""

from __future__ import annotations

import matplotlib
import numpy as np

from span.inference.heatmap import ALPHA, rank_normalise, render_heatmap, thumbnail


def test_cells_take_their_rank_colour_and_the_rest_stays_the_thumbnail(write_slide) -> None:
    rng = np.random.default_rng(0)
    slide = write_slide(rng.integers(0, 256, (512, 768, 3), dtype=np.uint8))
    grid = np.array([[0, 0], [2, 1], [5, 3], [1, 3]])  # (x, y) cells of 128 px
    scores = np.array([0.3, -2.0, 7.0, 0.3])  # a tie, a low and a top score
    image, downsample = thumbnail(slide, 384)
    out = render_heatmap(slide, grid, 128, scores, max_side=384)
    assert out.shape == image.shape == (256, 384, 3) and downsample == 2.0
    viridis = matplotlib.colormaps["viridis"]
    painted = np.zeros(image.shape[:2], bool)
    for (x, y), rank in zip(grid, rank_normalise(scores), strict=True):
        cell = np.s_[y * 64 : (y + 1) * 64, x * 64 : (x + 1) * 64]
        colour = np.asarray(viridis(rank)[:3]) * 255
        expected = ((1 - ALPHA) * image[cell] + ALPHA * colour).astype(np.uint8)
        np.testing.assert_array_equal(out[cell], expected)
        painted[cell] = True
    np.testing.assert_array_equal(out[~painted], image[~painted])
    # The top score is viridis' last colour, the lowest its first.
    assert rank_normalise(scores)[2] == 1.0 and rank_normalise(scores)[1] == 0.0


def test_a_grid_reaching_past_the_thumbnail_is_cut_at_its_edge(write_slide) -> None:
    slide = write_slide(np.full((256, 256, 3), 200, np.uint8))
    # Cells of 50 thumbnail px: the second one spans 100-150, past the 128-px thumbnail.
    out = render_heatmap(slide, np.array([[0, 0], [2, 2]]), 100, np.array([1.0, 2.0]), 128)
    assert out.shape == (128, 128, 3)
    assert (out[:50, :50] != 200).all() and (out[100:, 100:] != 200).all()
    assert (out[50:100, :] == 200).all() and (out[:, 50:100] == 200).all()
    np.testing.assert_array_equal(
        render_heatmap(slide, np.zeros((0, 2), int), 100, np.zeros(0), 128), out * 0 + 200
    )


def test_a_slightly_coarser_level_is_read_as_it_is(write_slide) -> None:
    """Asked for 450 px of a 1536-px slide (3.4x), the thumbnail is pyramid level 1 (4x) as
    openslide reads it, 384 px, not level 0 decoded and shrunk; at 300 px (5.1x) level 1 is
    shrunk as before, since level 2 (16x) is more than 1.5x coarser."""
    import openslide

    rng = np.random.default_rng(1)
    slide = write_slide(rng.integers(0, 256, (1024, 1536, 3), dtype=np.uint8))
    image, downsample = thumbnail(slide, 450)
    with openslide.OpenSlide(slide) as s:
        level1 = np.asarray(s.read_region((0, 0), 1, s.level_dimensions[1]).convert("RGB"))
    assert downsample == 4.0
    np.testing.assert_array_equal(image, level1)
    image, downsample = thumbnail(slide, 300)
    assert image.shape == (200, 300, 3) and downsample == 1536 / 300
