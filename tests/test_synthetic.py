"""Synthetic slides: OpenSlide reads them with the right mpp/levels, they are deterministic, and
the tumour, pen and tile-writer ground truth holds."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import openslide
import pytest

from span.slides.tiff_writer import write_pyramidal_tiff, write_pyramidal_tiff_from_tiles
from span.synthetic import DEMO_SLIDES
from span.synthetic.demo import (
    demo_label,
    demo_sheet,
    demo_slide_ids,
    demo_slide_options,
    make_demo_slide,
    write_demo_cohort,
)
from span.synthetic.large_slide import write_large_synthetic_slide
from span.synthetic.noise import NoiseField, smooth_noise
from span.synthetic.tissue import PATCH_UM, render_tissue

SEED = 42


def _first_id(mpp: float) -> str:
    """A demo slide id whose seeded options give this magnification."""
    for sid in demo_slide_ids(64):
        if demo_slide_options(sid, SEED)["mpp"] == mpp:
            return sid
    raise AssertionError(f"no demo slide at {mpp} um/px among 64 ids")


@pytest.fixture(scope="module")
def demo_20x(tmp_path_factory: pytest.TempPathFactory) -> dict:
    sid = _first_id(0.5)
    return make_demo_slide(tmp_path_factory.mktemp("d20") / f"{sid}.tiff", sid, "tumor", SEED)


@pytest.fixture(scope="module")
def small_tumour() -> tuple[np.ndarray, ...]:
    return render_tissue(1000, 1100, 0.5, tumour=True, seed=7, pen=None, dust=True)


def _check_opens(info: dict, mpp: float) -> None:
    with openslide.OpenSlide(info["path"]) as slide:
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(mpp)
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(mpp)
        assert slide.level_count >= 3
        assert slide.dimensions == (info["width_px"], info["height_px"])
        assert slide.level_downsamples[1] == pytest.approx(4, rel=0.01)
        assert slide.level_downsamples[2] == pytest.approx(16, rel=0.02)
        region = np.asarray(slide.read_region((0, 0), 2, (64, 64)).convert("RGB"))
        assert region.std() > 0 or region.mean() > 200  # decodes to real pixels


def test_demo_slide_opens_at_20x(demo_20x: dict) -> None:
    assert demo_20x["mpp"] == 0.5 and demo_20x["magnification"] == 20
    _check_opens(demo_20x, 0.5)
    assert min(demo_20x["height_px"], demo_20x["width_px"]) >= 2500
    assert max(demo_20x["height_px"], demo_20x["width_px"]) <= 5000
    assert 50 <= demo_20x["patch_cells_estimate"] <= 220
    assert 0.08 <= demo_20x["tumour_fraction_of_tissue"] <= 0.35


def test_demo_slide_opens_at_40x(tmp_path: Path) -> None:
    sid = _first_id(0.25)
    info = make_demo_slide(tmp_path / f"{sid}.tiff", sid, "normal", seed=SEED)
    assert info["magnification"] == 40
    _check_opens(info, 0.25)
    # Same physical size as a 20x slide: twice the pixels.
    assert info["height_px"] == round(info["height_um"] / 0.25)
    assert info["tumour_fraction_of_tissue"] == 0.0


def test_demo_options_vary_per_slide() -> None:
    opts = [demo_slide_options(f"s{i}", SEED) for i in range(400)]
    forty = np.mean([o["mpp"] == 0.25 for o in opts])
    pen = np.mean([o["pen"] is not None for o in opts])
    assert 0.06 < forty < 0.2
    assert 0.2 < pen < 0.45
    assert {o["pen"] for o in opts} == {None, "blue", "green", "black"}
    assert demo_slide_options("demo_03", SEED) == demo_slide_options("demo_03", SEED)
    assert demo_slide_options("demo_03", SEED) != demo_slide_options("demo_03", SEED + 1)


def test_demo_slide_is_deterministic(demo_20x: dict, tmp_path: Path) -> None:
    again = make_demo_slide(tmp_path / "again.tiff", demo_20x["slide_id"], "tumor", SEED)
    assert Path(again["path"]).read_bytes() == Path(demo_20x["path"]).read_bytes()
    other_id = next(s for s in demo_slide_ids(64) if s != demo_20x["slide_id"])
    other = demo_slide_options(other_id, SEED)
    assert other["render_seed"] != demo_20x["render_seed"]
    # Different seeds draw different images (same size here, so only the content differs).
    a = render_tissue(600, 600, 0.5, tumour=False, seed=demo_20x["render_seed"])[0]
    b = render_tissue(600, 600, 0.5, tumour=False, seed=other["render_seed"])[0]
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 5


def test_tumour_islands_are_clustered_and_look_different(small_tumour: tuple) -> None:
    image, tissue, tumour, pen = small_tumour
    normal_image, normal_tissue, normal_tumour, _ = render_tissue(
        1000, 1100, 0.5, tumour=False, seed=7, pen=None, dust=True
    )
    assert not normal_tumour.any()
    assert np.array_equal(normal_tissue, tissue)  # the tumour flag does not move the tissue
    assert not pen.any()
    frac = tumour.sum() / tissue.sum()
    assert 0.08 <= frac <= 0.35
    assert not (tumour & ~tissue).any()

    def bbox_area(mask: np.ndarray) -> int:
        ys, xs = np.nonzero(mask)
        return int((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))

    assert bbox_area(tumour) < 0.6 * bbox_area(tissue)
    tumour_rgb = image[tumour].mean(axis=0)
    normal_rgb = image[tissue & ~tumour].mean(axis=0)
    assert np.linalg.norm(tumour_rgb - normal_rgb) > 60
    # The normal slide's tissue looks like the tumour slide's non-tumour tissue.
    assert np.linalg.norm(normal_image[normal_tissue].mean(axis=0) - normal_rgb) < 10
    assert tumour_rgb.mean() < normal_rgb.mean() - 40  # darker
    assert tumour_rgb[2] > tumour_rgb[0]  # blue-purple
    background = image[~tissue].mean(axis=0)
    assert (background > 230).all() and (background < 252).all()


@pytest.mark.parametrize("colour", ["blue", "green", "black"])
def test_pen_mask_has_ink_hue(colour: str, small_tumour: tuple) -> None:
    plain = small_tumour[0]
    image, _, _, pen = render_tissue(1000, 1100, 0.5, tumour=True, seed=7, pen=colour)
    assert 0.005 < pen.mean() < 0.4
    assert np.array_equal(image[~pen], plain[~pen])  # ink only where the mask says
    r, g, b = image[pen].mean(axis=0)
    if colour == "blue":
        assert b > r + 50 and b > g + 40
    elif colour == "green":
        assert g > r + 40 and g > b + 15
    else:
        assert max(r, g, b) < 90


def test_tiles_writer_matches_render_tile(tmp_path: Path) -> None:
    side, mpp = 2048, 0.25

    def render_tile(ds: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        yy, xx = np.mgrid[y : y + h, x : x + w].astype(np.float32) * ds
        out = np.empty((h, w, 3), dtype=np.uint8)
        out[..., 0] = 128 + 100 * np.sin(yy / 150.0)
        out[..., 1] = 128 + 100 * np.cos(xx / 230.0)
        out[..., 2] = ((yy + xx) / (2 * side) * 255).clip(0, 255)
        return out

    path = write_pyramidal_tiff_from_tiles(
        tmp_path / "tiles.tiff", side, side - 100, render_tile, mpp, downsamples=(1, 4, 16)
    )
    with openslide.OpenSlide(path) as slide:
        assert slide.dimensions == (side - 100, side)
        assert slide.level_count == 3
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(mpp)
        level0 = np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))
        level1 = np.asarray(slide.read_region((0, 0), 1, slide.level_dimensions[1]).convert("RGB"))
    expected = render_tile(1, 0, 0, side, side - 100).astype(int)
    assert np.abs(level0.astype(int) - expected).mean() < 3
    expected1 = render_tile(4, 0, 0, *level1.shape[:2]).astype(int)
    assert np.abs(level1.astype(int) - expected1).mean() < 4
    assert [p.name for p in tmp_path.iterdir()] == ["tiles.tiff"]


def test_writers_leave_nothing_behind_on_error(tmp_path: Path) -> None:
    def broken(ds: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        if y > 0:
            raise RuntimeError("renderer failed")
        return np.zeros((h, w, 3), dtype=np.uint8)

    with pytest.raises(RuntimeError, match="renderer failed"):
        write_pyramidal_tiff_from_tiles(tmp_path / "x.tiff", 1024, 1024, broken, 0.5)
    with pytest.raises(ValueError):
        write_pyramidal_tiff(tmp_path / "y.tiff", np.zeros((64, 64), np.uint8), 0.5)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("periodic", [False, True])
def test_noise_is_smooth_seeded_and_the_same_in_any_strip(periodic: bool) -> None:
    """One noise generator for every synthetic field: roughly unit variance, deterministic per
    seed, a strip of rows is the same rows of the whole field, and a periodic field tiles
    seamlessly (the rows after its last one are its first ones again)."""
    shape = (300, 260)
    field = NoiseField(np.random.default_rng(3), shape, 24.0, 9.0, periodic=periodic)
    whole = field.rows(0, shape[0])
    assert whole.dtype == np.float32 and whole.shape == shape
    assert 0.6 < whole.std() < 1.6 and abs(whole.mean()) < 0.5
    # (to float32 rounding: the strip's offset enters the resampling coordinates)
    np.testing.assert_allclose(field.rows(117, 181), whole[117:181], rtol=0, atol=1e-5)
    again = smooth_noise(np.random.default_rng(3), shape, 24.0, 9.0, periodic=periodic)
    # (cv2.resize draws the unwrapped whole field: the same mapping, float rounding apart)
    np.testing.assert_allclose(again, whole, rtol=0, atol=1e-4)
    # Smooth: neighbouring pixels differ far less than the field varies.
    assert np.abs(np.diff(whole, axis=0)).mean() < 0.25 * whole.std()
    if periodic:
        np.testing.assert_allclose(
            field.rows(shape[0], shape[0] + 40), whole[:40], rtol=0, atol=1e-5
        )


def test_exact_noise_cells_do_not_depend_on_the_shape() -> None:
    """Stain textures keep their scale in pixels whatever the slide's size (a fitted field
    rounds its cell to fit the shape), strips still agree with the whole, and a wrapped field
    cannot be exact."""
    for shape in [(100, 90), (333, 91)]:
        exact = NoiseField(np.random.default_rng(5), shape, 7.0, 3.0, exact=True)
        assert (exact.sy, exact.sx) == (pytest.approx(1 / 7.0), pytest.approx(1 / 3.0))
        whole = exact.rows(0, shape[0])
        assert whole.shape == shape and 0.6 < whole.std() < 1.6
        np.testing.assert_allclose(exact.rows(10, 60), whole[10:60], rtol=0, atol=1e-5)
    fitted = NoiseField(np.random.default_rng(5), (100, 90), 7.0)
    assert fitted.sy == pytest.approx(15 / 100)  # 14 cells of 7.1 px plus the closing edge
    with pytest.raises(ValueError, match="periodic"):
        NoiseField(np.random.default_rng(5), (100, 90), 7.0, periodic=True, exact=True)


def test_large_synthetic_slide_small_case(tmp_path: Path) -> None:
    info = write_large_synthetic_slide(tmp_path / "big.tiff", side_px=2048, seed=1)
    assert 0.2 < info["tissue_fraction"] < 0.45
    with openslide.OpenSlide(info["path"]) as slide:
        assert slide.dimensions == (2048, 2048)
        assert slide.level_count == 4
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.25)
        thumb = np.asarray(slide.read_region((0, 0), 3, slide.level_dimensions[3]).convert("RGB"))
    # Tissue (pinkish, darker than glass) covers roughly the layout's fraction at the top level.
    tissue = thumb.mean(axis=2) < 225
    assert abs(tissue.mean() - info["tissue_fraction"]) < 0.1


def test_write_demo_cohort_sheet(tmp_path: Path) -> None:
    sheet = write_demo_cohort(tmp_path / "demo", n_slides=2, seed=SEED)
    assert sheet == tmp_path / "demo" / "samples.tsv"
    with sheet.open(newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    assert rows[0] == ["slide_id", "path", "label", "patient"]
    assert rows[1:] == [
        ["demo_00", str(tmp_path / "demo" / "slides" / "demo_00.tiff"), "scattered", "P00"],
        ["demo_01", str(tmp_path / "demo" / "slides" / "demo_01.tiff"), "clumped", "P01"],
    ]
    for row in rows[1:]:
        with openslide.OpenSlide(row[1]) as slide:
            assert slide.level_count >= 3
    assert [demo_label(i) for i in range(4)] == ["scattered", "clumped"] * 2
    assert demo_slide_ids(3) == ["demo_00", "demo_01", "demo_02"]


def test_committed_demo_sheet_is_the_generated_one() -> None:
    committed = (Path(__file__).resolve().parents[1] / "config" / "demo_samples.tsv").read_text()
    assert committed == demo_sheet("resources/demo/slides", DEMO_SLIDES)


def _tumour_share(tumour: np.ndarray, mpp: float) -> np.ndarray:
    """Share of tumour in each patch cell (112 um)."""
    cell = round(PATCH_UM / mpp)
    h, w = (tumour.shape[0] // cell) * cell, (tumour.shape[1] // cell) * cell
    return tumour[:h, :w].reshape(h // cell, cell, w // cell, cell).mean(axis=(1, 3))


def test_clumped_and_scattered_tumour_differ_only_in_arrangement() -> None:
    """Same tissue and the same share of tumour; clumped tumour fills neighbouring patch cells
    (1-2 foci), scattered tumour sits in separate cells; in both, a cell holds a whole nest or
    none (no sliver of a neighbour's tumour), so patches look alike in both classes."""
    from scipy.ndimage import label

    mpp, shares, largest = 4.0, {}, {}
    for arrangement in ("clumped", "scattered"):
        sizes = []
        for seed in range(4):
            _, tissue, tumour, _ = render_tissue(
                1400, 1400, mpp, tumour=True, seed=seed, dust=False, arrangement=arrangement
            )
            shares.setdefault(arrangement, []).append(tumour.sum() / tissue.sum())
            share = _tumour_share(tumour, mpp)
            assert not ((share > 0) & (share < 0.3)).any()  # no slivers
            parts, count = label(share >= 0.3)
            sizes.append(np.bincount(parts.ravel())[1:].max() if count else 0)
        largest[arrangement] = np.mean(sizes)
    assert abs(np.mean(shares["clumped"]) - np.mean(shares["scattered"])) < 0.03
    assert largest["clumped"] >= 3 * largest["scattered"]
    with pytest.raises(ValueError, match="arrangement"):
        render_tissue(500, 500, mpp, tumour=True, seed=0, arrangement="striped")


def test_demo_slide_command_places_tumour_by_label(tmp_path: Path) -> None:
    """`span demo-slide --label clumped|scattered` writes the same tissue with the same share
    of tumour cells, arranged differently; tumor draws islands; other labels are refused."""
    from span.cli import main

    infos = {}
    for label in ("clumped", "scattered", "tumor"):
        out = tmp_path / f"{label}.tiff"
        args = ["demo-slide", "--slide-id", "demo_01", "--label", label, "--out", str(out)]
        assert main(args) == 0
        with openslide.OpenSlide(out) as slide:
            assert slide.level_count == 3
        infos[label] = make_demo_slide(tmp_path / f"again-{label}.tiff", "demo_01", label)
        assert infos[label]["tumour_fraction_of_tissue"] > 0.05
    clumped, scattered = infos["clumped"], infos["scattered"]
    assert clumped["tissue_fraction"] == scattered["tissue_fraction"]
    share = clumped["tumour_fraction_of_tissue"] / scattered["tumour_fraction_of_tissue"]
    assert 0.8 < share < 1.25
    assert (tmp_path / "clumped.tiff").read_bytes() != (tmp_path / "scattered.tiff").read_bytes()
    with pytest.raises(ValueError, match="demo label"):
        make_demo_slide(tmp_path / "n.tiff", "demo_00", "striped")
