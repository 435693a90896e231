"""Attention heatmaps: each patch's cell painted half-and-half over the slide thumbnail with
the viridis colour of its score's rank; everything else stays the thumbnail. Its figure says
what it shows: a title, a colour bar of real scores, and a gallery of the top patches."""

from __future__ import annotations

import dataclasses

import cv2
import matplotlib
import numpy as np
import pytest

from span.errors import SpanError
from span.inference import heatmap
from span.inference.heatmap import (
    ALPHA,
    HeatmapCaption,
    colourbar_ticks,
    figure_rgb,
    heatmap_figure,
    paint_heatmap,
    rank_normalise,
    thumbnail,
)


def test_cells_take_their_rank_colour_and_the_rest_stays_the_thumbnail(write_slide) -> None:
    rng = np.random.default_rng(0)
    slide = write_slide(rng.integers(0, 256, (512, 768, 3), dtype=np.uint8))
    grid = np.array([[0, 0], [2, 1], [5, 3], [1, 3]])  # (x, y) cells of 128 px
    scores = np.array([0.3, -2.0, 7.0, 0.3])  # a tie, a low and a top score
    image, downsample = thumbnail(slide, 384)
    out = paint_heatmap(image, downsample, grid, 128, scores)
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
    image, downsample = thumbnail(slide, 128)
    out = paint_heatmap(image, downsample, np.array([[0, 0], [2, 2]]), 100, np.array([1.0, 2.0]))
    assert out.shape == (128, 128, 3)
    assert (out[:50, :50] != 200).all() and (out[100:, 100:] != 200).all()
    assert (out[50:100, :] == 200).all() and (out[:, 50:100] == 200).all()
    np.testing.assert_array_equal(
        paint_heatmap(image, downsample, np.zeros((0, 2), int), 100, np.zeros(0)), out * 0 + 200
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


# The captioned figure: thumbnail | heatmap | colour bar of real scores, titled, with a gallery.

CAPTION = HeatmapCaption(
    slide_id="case-07",
    true_label="tumour",
    predicted="normal",
    probability=0.9349,
    model="span",
    meaning="gradient x input toward the predicted class",
)


def _scored_slide(write_slide):
    """A 768 x 512 slide with 4 patches of 128 px, their cells, corners and (signed) scores."""
    rng = np.random.default_rng(2)
    slide = write_slide(rng.integers(0, 256, (512, 768, 3), dtype=np.uint8))
    grid = np.array([[0, 0], [2, 1], [5, 3], [1, 3]])
    return slide, grid, grid * 128, np.array([0.25, -2.0, 7.5, 1.0])


def _axes(fig, label: str):
    """The figure's axes labelled `label` (heatmap_figure labels each of its axes)."""
    return [ax for ax in fig.axes if ax.get_label() == label]


def test_colour_bar_ticks_are_the_real_scores_at_percentiles_of_the_rank_colours(
    write_slide,
) -> None:
    scores = np.random.default_rng(3).normal(size=50) * 1e-3
    positions, labels = colourbar_ticks(scores)
    np.testing.assert_array_equal(positions, [0, 0.25, 0.5, 0.75, 1])
    assert labels[0] == f"{scores.min():.3g}" and labels[-1] == f"{scores.max():.3g}"
    assert labels[2] == f"{np.median(scores):.3g}" and len(labels) == 5
    slide, grid, coords, scores = _scored_slide(write_slide)
    fig = heatmap_figure(slide, grid, coords, 128, scores, CAPTION, max_side=256)
    (bar,) = _axes(fig, "colourbar")
    positions, labels = colourbar_ticks(scores)
    assert labels[0] == "-2" and labels[-1] == "7.5"
    np.testing.assert_array_equal(bar.get_yticks(), positions)
    assert [t.get_text() for t in bar.get_yticklabels()] == labels
    assert bar.get_ylim() == (0, 1) and "rank" in bar.get_ylabel()


def test_title_states_slide_truth_prediction_model_and_score_meaning(write_slide) -> None:
    slide, grid, coords, scores = _scored_slide(write_slide)
    fig = heatmap_figure(slide, grid, coords, 128, scores, CAPTION, max_side=256)
    title = fig.get_suptitle().replace("\n", " ")
    for part in ("case-07", "true: tumour", "predicted: normal (p = 0.93)", "span"):
        assert part in title
    assert CAPTION.meaning in title and "unlabelled" not in title
    unlabelled = dataclasses.replace(CAPTION, true_label=None)
    fig = heatmap_figure(slide, grid, coords, 128, scores, unlabelled, max_side=256)
    assert "unlabelled" in fig.get_suptitle() and "true:" not in fig.get_suptitle()


def test_panels_are_the_thumbnail_and_the_heatmap_side_by_side(write_slide) -> None:
    slide, grid, coords, scores = _scored_slide(write_slide)
    fig = heatmap_figure(slide, grid, coords, 128, scores, CAPTION, max_side=256)
    (thumb,), (heat,) = _axes(fig, "thumbnail"), _axes(fig, "heatmap")
    np.testing.assert_array_equal(thumb.images[0].get_array(), thumbnail(slide, 256)[0])
    np.testing.assert_array_equal(
        heat.images[0].get_array(), paint_heatmap(*thumbnail(slide, 256), grid, 128, scores)
    )
    left, right = thumb.get_position(), heat.get_position()
    assert left.bounds[1:] == pytest.approx(right.bounds[1:]) and left.x1 < right.x0
    assert not any(len(ax.get_xticks()) or len(ax.get_yticks()) for ax in (thumb, heat))
    assert not _axes(fig, "tile 1") and not heat.patches  # top_k=0: no gallery, no outlines


def test_gallery_shows_the_top_patches_in_score_order_as_read_from_the_slide(write_slide) -> None:
    import openslide

    slide, grid, coords, scores = _scored_slide(write_slide)
    fig = heatmap_figure(slide, grid, coords, 128, scores, CAPTION, max_side=256, top_k=3)
    with openslide.OpenSlide(slide) as s:
        for rank, i in enumerate([2, 3, 0], 1):  # scores 7.5, 1.0, 0.25
            (tile,) = _axes(fig, f"tile {rank}")
            region = s.read_region(tuple(int(v) for v in coords[i]), 0, (128, 128))
            np.testing.assert_array_equal(
                tile.images[0].get_array(), np.asarray(region.convert("RGB"))
            )
            assert tile.get_title() == f"#{rank}  score {scores[i]:.3g}"
    assert not _axes(fig, "tile 4")
    (heat,) = _axes(fig, "heatmap")  # outlined at coords / downsample, numbered
    assert thumbnail(slide, 256)[1] == 4.0  # pyramid level 1 of the 768-px slide
    assert [(p.get_x(), p.get_y(), p.get_width()) for p in heat.patches] == [
        (160, 96, 32),
        (32, 96, 32),
        (0, 0, 32),
    ]
    assert [t.get_text() for t in heat.texts] == ["1", "2", "3"]
    fig = heatmap_figure(slide, grid, coords, 128, scores, CAPTION, max_side=256, top_k=10)
    assert len([ax for ax in fig.axes if ax.get_label().startswith("tile ")]) == 4
    # Patches larger than a tile are shrunk to it.
    fig = heatmap_figure(slide, grid[:1], coords[:1], 256, scores[:1], CAPTION, 256, top_k=1)
    with openslide.OpenSlide(slide) as s:
        region = np.asarray(s.read_region((0, 0), 0, (256, 256)).convert("RGB"))
    np.testing.assert_array_equal(
        _axes(fig, "tile 1")[0].images[0].get_array(),
        cv2.resize(region, (160, 160), interpolation=cv2.INTER_AREA),
    )


def test_an_unreadable_tile_is_drawn_grey_and_the_others_still_read(
    write_slide, monkeypatch
) -> None:
    slide, grid, coords, scores = _scored_slide(write_slide)
    real_read = heatmap.read_rgb

    def read_rgb(slide_handle, path, location, level, size):
        if tuple(location) == (640, 384):  # the top patch
            raise SpanError(path, "cannot read region", "re-export it")
        return real_read(slide_handle, path, location, level, size)

    monkeypatch.setattr(heatmap, "read_rgb", read_rgb)
    fig = heatmap_figure(slide, grid, coords, 128, scores, CAPTION, max_side=256, top_k=2)
    (grey,), (second,) = _axes(fig, "tile 1"), _axes(fig, "tile 2")
    assert (grey.images[0].get_array() == 160).all() and grey.texts[0].get_text() == "unreadable"
    assert second.images[0].get_array().shape == (128, 128, 3) and not second.texts


def test_no_patch_or_one_patch_still_renders(write_slide) -> None:
    slide, grid, coords, scores = _scored_slide(write_slide)
    fig = heatmap_figure(slide, grid[:0], coords[:0], 128, scores[:0], CAPTION, 256, top_k=3)
    (bar,) = _axes(fig, "colourbar")
    assert not len(bar.get_yticks()) and not _axes(fig, "tile 1")
    width, height = fig.get_size_inches() * fig.dpi
    rgb = figure_rgb(fig)
    assert rgb.shape == (round(height), round(width), 3) and rgb.dtype == np.uint8
    assert not fig.axes  # figure_rgb cleared it
    fig = heatmap_figure(slide, grid[:1], coords[:1], 128, scores[:1], CAPTION, 256, top_k=3)
    (bar,) = _axes(fig, "colourbar")
    assert list(bar.get_yticks()) == [1.0] and bar.get_yticklabels()[0].get_text() == "0.25"
    assert _axes(fig, "tile 1") and not _axes(fig, "tile 2")
    assert figure_rgb(fig).shape[2] == 3
    assert colourbar_ticks(np.zeros(0))[1] == [] and colourbar_ticks(np.array([3.0]))[1] == ["3"]
