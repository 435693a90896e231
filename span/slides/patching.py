"""The slide stage: segment tissue at low resolution and keep cells of one global patch grid."""

from __future__ import annotations

import logging
import math
import textwrap
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import openslide

import span
from span.atomic import write_png
from span.batches import BatchItem, SlideOutcome, SlideStore, file_identity, key_of, run_batch
from span.errors import SpanError
from span.settings.options import check_values
from span.settings.stages import PatchSettings
from span.slides.grid import cell_tissue_fraction, grid_cells, grid_to_coords, select_cells
from span.slides.patch_file import PatchSet, write_patch_file
from span.slides.qc import render_message, render_qc
from span.slides.reader import open_slide, read_downsampled, slide_resolution
from span.slides.segmentation import SegmentationParams, segment_tissue

log = logging.getLogger(__name__)
_DEFAULT = PatchSettings()

#: Minimum mask pixels per grid-cell side, so tissue fractions have some resolution.
MIN_CELL_PX = 4


@dataclass(frozen=True)
class PatchingParams:
    """What the slide stage depends on (all of it comes from the rule's params)."""

    target_mpp: float = _DEFAULT.target_mpp
    patch_size: int = _DEFAULT.patch_size
    min_tissue_fraction: float = _DEFAULT.min_tissue_fraction
    fallback_mpp: float | None = _DEFAULT.fallback_mpp
    qc_max_side: int = _DEFAULT.qc_max_side
    segmentation: SegmentationParams = field(default_factory=SegmentationParams)

    def __post_init__(self) -> None:
        check_values(self, PatchSettings)


@dataclass
class SlideGeometry:
    """How the global grid and the low-resolution images map onto level 0."""

    patch_size0: int  # grid cell side in level-0 pixels
    n_cols: int  # whole cells inside the slide
    n_rows: int
    cover_cols: int  # cells covering the slide, the last ones partial
    cover_rows: int
    cell_px: int  # segmentation-mask pixels per cell side


def slide_geometry(
    dimensions: tuple[int, int], mpp: float, params: PatchingParams
) -> SlideGeometry:
    """Level-0 patch size = round(patch_size * target_mpp / slide_mpp), and the grid it spans."""
    width0, height0 = dimensions
    ps0 = max(1, round(params.patch_size * params.target_mpp / mpp))
    n_cols, n_rows = grid_cells(width0, height0, ps0)
    cell_px = max(MIN_CELL_PX, round(ps0 * mpp / params.segmentation.seg_mpp))
    return SlideGeometry(
        patch_size0=ps0,
        n_cols=n_cols,
        n_rows=n_rows,
        cover_cols=math.ceil(width0 / ps0),
        cover_rows=math.ceil(height0 / ps0),
        cell_px=cell_px,
    )


def _read_seg_and_thumb(slide, path, geo: SlideGeometry, qc_max_side: int):
    """The segmentation image and the QC thumbnail, from a single read at the finer of the two."""
    cover_w, cover_h = geo.cover_cols * geo.patch_size0, geo.cover_rows * geo.patch_size0
    seg_size = (geo.cover_cols * geo.cell_px, geo.cover_rows * geo.cell_px)
    seg_ds = geo.patch_size0 / geo.cell_px
    thumb_ds = max(max(cover_w, cover_h) / qc_max_side, 1.0)
    thumb_size = (max(1, round(cover_w / thumb_ds)), max(1, round(cover_h / thumb_ds)))
    if thumb_ds < seg_ds:
        thumb = read_downsampled(slide, path, thumb_ds, thumb_size)
        seg = cv2.resize(thumb, seg_size, interpolation=cv2.INTER_AREA)
    else:
        seg = read_downsampled(slide, path, seg_ds, seg_size)
        thumb = cv2.resize(seg, thumb_size, interpolation=cv2.INTER_AREA)
    return seg, thumb


def _patch_level(slide: openslide.OpenSlide, mpp: float, params: PatchingParams, ps0: int):
    """The level patches are read from (finest needed) and the patch side there."""
    level = slide.get_best_level_for_downsample(params.target_mpp / mpp)
    return level, max(1, round(ps0 / slide.level_downsamples[level]))


def patch_slide(
    slide_path: str | Path, slide_id: str, params: PatchingParams
) -> tuple[PatchSet, np.ndarray]:
    """Patches of one slide on the global grid, and its QC image (RGB)."""
    slide = open_slide(slide_path)
    with slide:
        res = slide_resolution(slide, slide_path, params.fallback_mpp)
        warnings = list(res.warnings)
        geo = slide_geometry(slide.dimensions, res.mpp, params)
        if res.mpp > params.target_mpp * 1.05:
            warnings.append(
                f"slide resolution {res.mpp:g} um/px is coarser than the target "
                f"{params.target_mpp:g}: patches are upsampled"
            )
        if geo.cover_cols == 0 or geo.cover_rows == 0:
            raise SpanError(slide_path, "slide has no pixels", "drop its row from the sample sheet")
        seg_img, thumb = _read_seg_and_thumb(slide, slide_path, geo, params.qc_max_side)
        seg_mpp = res.mpp * geo.patch_size0 / geo.cell_px
        mask = segment_tissue(seg_img, seg_mpp, params.segmentation)
        frac = cell_tissue_fraction(mask.tissue, geo.cell_px, geo.n_cols, geo.n_rows)
        grid = select_cells(frac, params.min_tissue_fraction)
        if len(grid) == 0:
            warnings.append("no tissue patches found: slide excluded from training and evaluation")
        level, level_patch = _patch_level(slide, res.mpp, params, geo.patch_size0)
        attrs = {
            "slide_id": slide_id,
            "slide_path": str(slide_path),
            "patch_size": level_patch,
            "patch_level": level,
            "patch_size_level0": geo.patch_size0,
            "target_patch_size": params.patch_size,
            "target_mpp": params.target_mpp,
            "target_magnification": 10.0 / params.target_mpp,
            "slide_mpp": res.mpp,
            "mpp_source": res.source,
            "level_dimensions": [list(d) for d in slide.level_dimensions],
            "level_downsamples": list(slide.level_downsamples),
            "grid_shape": [geo.n_cols, geo.n_rows],
            "min_tissue_fraction": params.min_tissue_fraction,
            "saturation_threshold_used": mask.threshold,
            "tissue_area_mm2": float(mask.tissue.sum()) * seg_mpp**2 / 1e6,
            "software": f"span-wsi {span.__version__}",
            "openslide_version": openslide.__library_version__,
            "warnings": warnings,
            **params.segmentation.as_attrs(),
        }
    patches = PatchSet(
        coords=grid_to_coords(grid, geo.patch_size0),
        grid=grid,
        tissue_fraction=frac[grid[:, 1], grid[:, 0]],
        attrs=attrs,
    )
    title = [
        f"{slide_id}: {len(grid)} patches of {geo.patch_size0} px (level 0), "
        f"{res.mpp:.3f} um/px ({res.source}), tissue {attrs['tissue_area_mm2']:.2f} mm2",
        *warnings,
    ]
    qc = render_qc(thumb, mask.tissue, mask.pen, grid, (geo.cover_cols, geo.cover_rows), title)
    return patches, qc


def run_patching(
    slide_path: str | Path,
    slide_id: str,
    out_h5: str | Path,
    qc_png: str | Path,
    params: PatchingParams,
) -> PatchSet:
    """Patch one slide and write its patch file and QC image (each atomically)."""
    patches, qc = patch_slide(slide_path, slide_id, params)
    for warning in patches.warnings:
        log.warning("%s: %s", slide_path, warning)
    write_png(qc_png, qc)
    write_patch_file(out_h5, patches)
    log.info("%s: %d patches -> %s", slide_id, len(patches), out_h5)
    return patches


#: The files a patch batch stores per slide (patch HDF5, QC image).
PATCH_SUFFIXES = (".h5", ".png")


def unpatchable(
    slide_path: str | Path, slide_id: str, error: SpanError
) -> tuple[PatchSet, np.ndarray]:
    """The patch file and QC image of a slide that could not be patched: no patches, and the
    error recorded (`error` attribute), so that the cohort excludes it with that line."""
    attrs = {
        "slide_id": slide_id,
        "slide_path": str(slide_path),
        "error": f"{error.reason}; {error.fix}",
        "software": f"span-wsi {span.__version__}",
        "warnings": [str(error)],
    }
    empty = PatchSet(np.zeros((0, 2), np.int64), np.zeros((0, 2), np.int32), np.zeros(0), attrs)
    title = [f"{slide_id}: not patched, excluded", *textwrap.wrap(str(error), 95)]
    return empty, render_message(title)


def patch_key(slide_path: str | Path, slide_id: str, params: PatchingParams) -> str:
    """What a slide's patch file and QC image depend on: the slide file and every option."""
    return key_of("patch", slide_id, file_identity(slide_path), asdict(params))


def run_patch_batch(
    slides: Sequence[tuple[str, str | Path]],
    store: SlideStore,
    manifest: str | Path,
    params: PatchingParams,
    strict: bool = False,
) -> list[SlideOutcome]:
    """Patch many slides (id, path) in one process into `store` (a patch file and a QC image
    each), reusing the ones whose stored files still match; write the manifest. A slide that
    cannot be patched is excluded (its files record the error) unless `strict`."""

    def item(slide_id: str, slide_path: str | Path) -> BatchItem:
        def make(files: dict[str, Path]) -> str:
            patches, qc = patch_slide(slide_path, slide_id, params)
            for warning in patches.warnings:
                log.warning("%s: %s", slide_path, warning)
            write_png(files[".png"], qc)
            write_patch_file(files[".h5"], patches)
            return f"{len(patches)} patches"

        def exclude(files: dict[str, Path], error: SpanError) -> None:
            patches, qc = unpatchable(slide_path, slide_id, error)
            write_png(files[".png"], qc)
            write_patch_file(files[".h5"], patches)

        try:
            key = patch_key(slide_path, slide_id, params)
        except OSError:  # gone since the workflow checked it: patch_slide says why
            key = key_of("patch", slide_id, str(slide_path), "unreadable")
        return BatchItem(slide_id, key, make, exclude)

    items = [item(slide_id, path) for slide_id, path in slides]
    return run_batch(items, store, manifest, PATCH_SUFFIXES, strict)
