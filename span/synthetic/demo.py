"""The demo cohort: slides of two classes that differ only in how their tumour-like patch cells
are arranged (`DEMO_CLASSES`), each with its own seeded size, magnification, pen and dust.

`span demo-slide` and `span demo-cohort` write them; ``config/demo_samples.tsv`` is
`demo_sheet` for ``resources/demo/slides``.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from span.atomic import write_text_atomic
from span.batches import BatchItem, SlideOutcome, SlideStore, key_of, run_batch
from span.settings.stages import DemoSettings
from span.slides.tiff_writer import write_pyramidal_tiff
from span.synthetic import DEMO_CLASSES, DEMO_LABELS, DEMO_SLIDES
from span.synthetic.tissue import PATCH_UM, render_tissue
from span.synthetic.truth import TRUTH_SUFFIX, truth_path, write_truth

_SEED = DemoSettings().seed


def demo_slide_ids(n: int = DEMO_SLIDES) -> list[str]:
    """Slide ids of the demo cohort: demo_00, demo_01, ..."""
    return [f"demo_{i:02d}" for i in range(n)]


def demo_label(index: int) -> str:
    """Label of the demo slide with this index: the classes in turn."""
    return DEMO_CLASSES[index % len(DEMO_CLASSES)]


def run_demo_batch(
    slides: Sequence[tuple[str, str]], store: SlideStore, manifest: str | Path, seed: int = _SEED
) -> list[SlideOutcome]:
    """Render many demo slides (id, label) in one process into `store` (STORE/<id>.tiff),
    reusing the ones already stored for the same label and seed; write the manifest."""

    def item(slide_id: str, label: str) -> BatchItem:
        def make(files: dict[str, Path]) -> str:
            info = make_demo_slide(files[".tiff"], slide_id, label, seed, files[TRUTH_SUFFIX])
            return f"{label}, {info['width_px']} x {info['height_px']} px at {info['mpp']:g} um/px"

        return BatchItem(slide_id, key_of("demo", slide_id, label, seed), make)

    return run_batch([item(*s) for s in slides], store, manifest, (".tiff", TRUTH_SUFFIX))


def demo_slide_options(slide_id: str, seed: int = _SEED) -> dict:
    """Per-slide variation (size, magnification, pen, dust, render seed) from seed and slide id."""
    rng = np.random.default_rng([seed, zlib.crc32(slide_id.encode("utf-8"))])
    mpp = 0.25 if rng.random() < 0.125 else 0.5
    pen = None if rng.random() < 2 / 3 else ("blue", "green", "black")[int(rng.integers(3))]
    dust = bool(rng.random() < 0.75)
    cells = rng.uniform(85.0, 150.0)  # target tissue area in 112 um cells
    tissue_fraction = rng.uniform(0.38, 0.5)
    aspect = rng.uniform(0.8, 1.25)  # width / height
    slide_area = cells * PATCH_UM**2 / tissue_fraction
    height_um = round(math.sqrt(slide_area / aspect))
    width_um = round(height_um * aspect)
    return {
        "mpp": mpp,
        "magnification": 40 if mpp == 0.25 else 20,
        "pen": pen,
        "dust": dust,
        "height_um": float(height_um),
        "width_um": float(width_um),
        "tissue_fraction_target": float(tissue_fraction),
        "render_seed": int(rng.integers(2**31 - 1)),
    }


def make_demo_slide(
    path: str | os.PathLike,
    slide_id: str,
    label: str,
    seed: int = _SEED,
    truth: str | os.PathLike | None = None,
) -> dict:
    """Render and write one demo slide (3-level pyramidal TIFF) and its tumour truth (`truth`,
    by default beside it: `span.synthetic.truth`); return the options and stats.
    `label` is normal (no tumour), tumor (tumour islands) or a demo class: the tumour as whole
    patch cells, scattered or clumped (`DEMO_LABELS`)."""
    if label not in DEMO_LABELS:
        raise ValueError(f"demo label must be one of {DEMO_LABELS}, got {label!r}")
    opts = demo_slide_options(slide_id, seed)
    image, tissue, tumour_mask, pen_mask = render_tissue(
        opts["height_um"],
        opts["width_um"],
        opts["mpp"],
        tumour=label != "normal",
        seed=opts["render_seed"],
        pen=opts["pen"],
        dust=opts["dust"],
        tissue_fraction=opts["tissue_fraction_target"],
        arrangement=label if label in DEMO_CLASSES else None,
    )
    out = write_pyramidal_tiff(path, image, opts["mpp"], downsamples=(1, 4, 16))
    write_truth(truth_path(path) if truth is None else truth, tumour_mask)
    px_area = opts["mpp"] ** 2
    tissue_px = int(tissue.sum())
    return {
        "slide_id": slide_id,
        "path": str(out),
        "label": label,
        **opts,
        "height_px": int(image.shape[0]),
        "width_px": int(image.shape[1]),
        "tissue_fraction": tissue_px / tissue.size,
        "tumour_fraction_of_tissue": int(tumour_mask.sum()) / max(tissue_px, 1),
        "pen_fraction": float(pen_mask.mean()),
        "patch_cells_estimate": tissue_px * px_area / PATCH_UM**2,
    }


def demo_sheet(slides_dir: str | os.PathLike, n_slides: int = DEMO_SLIDES) -> str:
    """The demo cohort's sample sheet (TSV text) with slides at ``<slides_dir>/<id>.tiff``.

    ``config/demo_samples.tsv`` is this sheet for ``resources/demo/slides``.
    """
    rows = ["slide_id\tpath\tlabel\tpatient"]
    for i, sid in enumerate(demo_slide_ids(n_slides)):
        rows.append(f"{sid}\t{Path(slides_dir) / f'{sid}.tiff'}\t{demo_label(i)}\tP{i:02d}")
    return "\n".join(rows) + "\n"


def write_demo_cohort(
    out_dir: str | os.PathLike, n_slides: int = DEMO_SLIDES, seed: int = _SEED
) -> Path:
    """Write demo_00.. as ``<out_dir>/slides/<id>.tiff`` with their truth beside them, plus
    ``<out_dir>/samples.tsv``."""
    slides_dir = Path(out_dir) / "slides"
    for i, sid in enumerate(demo_slide_ids(n_slides)):
        make_demo_slide(slides_dir / f"{sid}.tiff", sid, demo_label(i), seed=seed)
    sheet = Path(out_dir) / "samples.tsv"
    write_text_atomic(sheet, demo_sheet(slides_dir, n_slides))
    return sheet
