"""Per-slide patch scores exported beside the heatmap: GeoJSON for viewers (QuPath), HDF5 for code.

The GeoJSON follows what QuPath (>= 0.4) writes and reads on File > Import objects
(qupath/qupath qupath-core/src/main/java/qupath/lib/io/PathObjectTypeAdapters.java: a Feature's
`properties.objectType`, and `properties.measurements` as an object name -> number since v0.4.0).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from span.atomic import atomic_output, require_space, write_text_atomic
from span.errors import SpanError
from span.h5io import (
    create_checked,
    damaged_error,
    open_h5,
    read_attrs,
    require_datasets,
    write_attrs,
)
from span.inference.heatmap import rank_normalise

#: QuPath's object type for the patches: a tile is QuPath's detection subclass for image regions
#: (its own tiles, superpixels), so Measure > Show measurement maps (which lists the measurements
#: of detections) colours the patches by score, while they are not counted as cells.
OBJECT_TYPE = "tile"
#: Datasets of the scores HDF5 file.
H5_DATASETS = ("coords", "grid", "scores")
_FIX = "re-run span predict for this variant"


@dataclass(frozen=True, eq=False)
class ScoreFile:
    """One slide's patch scores: level-0 top-left `coords`, `grid` cells (N, 2), `scores` (N,)."""

    coords: np.ndarray
    grid: np.ndarray
    scores: np.ndarray
    attrs: dict


def _checked(
    coords: np.ndarray, scores: np.ndarray, grid: np.ndarray | None = None
) -> tuple[np.ndarray, ...]:
    """`coords` (and `grid`) as (N, 2) int64 and `scores` as finite (N,), else ValueError."""
    coords, scores = np.asarray(coords), np.asarray(scores)
    arrays = {"coords": coords} if grid is None else {"coords": coords, "grid": np.asarray(grid)}
    shapes = ", ".join(f"{k} {a.shape}" for k, a in {**arrays, "scores": scores}.items())
    n = len(scores) if scores.ndim == 1 else -1
    if any(a.ndim != 2 or a.shape != (n, 2) for a in arrays.values()):
        raise ValueError(f"expected coords/grid (N, 2) and scores (N,) with one N, got {shapes}")
    for name, a in arrays.items():
        if len(a) and not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name} must be integer patch positions, got dtype {a.dtype}")
    if not np.isfinite(scores).all():
        bad = int((~np.isfinite(scores)).sum())
        raise ValueError(f"scores contain {bad} non-finite value(s) (NaN or inf) of {len(scores)}")
    return (*(a.astype(np.int64) for a in arrays.values()), scores.astype(np.float64))


def _plain(value: object) -> object:
    """NumPy values in `properties` as JSON numbers and lists."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_scores_geojson(
    path: str | Path,
    coords: np.ndarray,
    patch_size0: int,
    scores: np.ndarray,
    properties: dict | None = None,
) -> None:
    """Write one QuPath tile per patch (a level-0 square) with measurements `score` and `score
    percentile` (its rank within the slide, 0..1, as the heatmap colours it), atomically.

    `properties` (slide, model, what the scores mean) go at the FeatureCollection's top level, a
    foreign member that GeoJSON allows and QuPath ignores."""
    coords, scores = _checked(coords, scores)
    if patch_size0 <= 0:
        raise ValueError(f"patch_size0 must be positive, got {patch_size0}")
    s = int(patch_size0)
    corners = np.array([[0, 0], [s, 0], [s, s], [0, s], [0, 0]], np.int64)
    rings = (coords[:, None, :] + corners[None]).tolist()
    percentiles = rank_normalise(scores).tolist()
    features = [
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {
                "objectType": OBJECT_TYPE,
                "measurements": {"score": score, "score percentile": pct},
            },
        }
        for ring, score, pct in zip(rings, scores.tolist(), percentiles, strict=True)
    ]
    collection: dict = {"type": "FeatureCollection"}
    if properties is not None:
        collection["properties"] = properties
    collection["features"] = features
    text = json.dumps(collection, allow_nan=False, separators=(",", ":"), default=_plain)
    write_text_atomic(path, text)


def write_scores_h5(
    path: str | Path, coords: np.ndarray, grid: np.ndarray, scores: np.ndarray, attrs: dict
) -> None:
    """Write `coords`, `grid` (N, 2 int64), `scores` (N, float32) and `attrs` atomically, each
    dataset checksummed so that later damage fails on read."""
    coords, grid, scores = _checked(coords, scores, grid)
    require_space(path, coords.nbytes + grid.nbytes + scores.nbytes)
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        create_checked(f, "coords", data=coords)
        create_checked(f, "grid", data=grid)
        create_checked(f, "scores", data=scores.astype(np.float32))
        write_attrs(f, attrs)


def read_scores_h5(path: str | Path) -> ScoreFile:
    """Read a file of `write_scores_h5`; a missing, damaged or invalid one is one SpanError line."""
    with open_h5(path, _FIX) as f:
        require_datasets(f, path, H5_DATASETS, _FIX)
        try:
            coords, grid, scores = (f[name][:] for name in H5_DATASETS)
        except OSError as exc:  # a checksum that does not match, or data cut off
            raise damaged_error(
                path, f"damaged data, checksum mismatch or cut off ({exc})", _FIX
            ) from exc
        attrs = read_attrs(f)
    try:
        _checked(coords, scores, grid)
    except ValueError as exc:
        raise SpanError(path, f"invalid datasets ({exc})", _FIX) from exc
    return ScoreFile(coords, grid, scores, attrs)
