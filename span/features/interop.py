"""Import precomputed patch features (CLAM, TRIDENT or SPAN HDF5) as a SPAN features file.

A slide with a `features` column in the sample sheet skips patching and extraction; its file is
checked, put on the global grid (grid = coords // patch_size_level0) and rewritten in our layout.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from span.batches import BatchItem, SlideOutcome, SlideStore, file_identity, key_of, run_batch
from span.errors import SpanError
from span.features.feature_file import FeatureSet, write_feature_file
from span.h5io import open_h5, read_attrs, require_datasets
from span.slides.grid import coords_to_grid

log = logging.getLogger(__name__)

_FIX = "re-export the features file from its toolkit (or fix the sample sheet's features path)"
_PS0_FIX = "set features.import_patch_size_level0 in the config"
_TRIDENT_KEYS = ("patch_size_level0", "target_magnification", "level0_magnification", "overlap")
#: Attributes written by the import itself; a SPAN source's values for them are not copied.
_OWN_KEYS = frozenset(
    [
        "slide_id",
        "source",
        "source_layout",
        "encoder",
        "layer",
        "weights",
        "patch_size_level0",
        "warnings",
        "feature_dim",
    ]
)


def import_features(
    src: str | Path,
    out: str | Path,
    slide_id: str,
    patch_size_level0: int | None = None,
    encoder: str | None = None,
    layer: str | None = None,
) -> FeatureSet:
    """Convert one slide's features file from CLAM, TRIDENT or SPAN into our layout at `out`.

    `patch_size_level0`, `encoder` and `layer` (from the config) are used only when the file
    does not say; off-grid coordinates (CLAM's per-region grids) are snapped to the global grid,
    keeping one patch per cell. Returns the FeatureSet written.
    """
    with open_h5(src, _FIX) as f:
        require_datasets(f, src, ("features", "coords"), _FIX)
        features = _read(f, src, "features")
        coords = _read(f, src, "coords")
        root = read_attrs(f)
        coord_attrs = read_attrs(f["coords"])
        feat_attrs = read_attrs(f["features"])
        layout = _layout(f, root, coord_attrs)
        bad = _read(f, src, "bad_tiles") if layout == "span" and "bad_tiles" in f else None

    features, coords = _check_arrays(src, features, coords)
    ps0, warnings = _patch_size_level0(src, root, coord_attrs, patch_size_level0)
    coords, grid, keep, grid_warnings = _to_global_grid(coords, ps0)
    warnings += grid_warnings
    encoder, encoder_warnings = _provenance(root, feat_attrs, "encoder", encoder, "imported")
    layer, layer_warnings = _provenance(root, feat_attrs, "layer", layer, "")
    warnings += encoder_warnings + layer_warnings
    if len(features) == 0:
        warnings.append("no patches")
    for message in warnings:
        log.warning("%s: %s", src, message)

    attrs = _copied_attrs(root) if layout == "span" else {}
    source_warnings = root.get("warnings", []) if layout == "span" else []
    attrs.update(
        slide_id=slide_id,
        source=str(src),
        source_layout=layout,
        encoder=encoder,
        layer=layer,
        weights=_provenance(root, feat_attrs, "weights", None, "unknown")[0],
        patch_size_level0=ps0,
        warnings=[str(w) for w in source_warnings] + warnings,
    )
    dtype = np.float16 if features.dtype == np.float16 else np.float32
    fs = FeatureSet(
        features=features[keep].astype(dtype, copy=False),
        coords=coords,
        grid=grid,
        bad_tiles=_bad_tiles(bad),
        attrs=attrs,
    )
    write_feature_file(out, fs)
    return fs


def _read(f: h5py.File, path: str | Path, name: str) -> np.ndarray:
    """One dataset as an array; a group or unreadable data is a SpanError."""
    obj = f[name]
    if not isinstance(obj, h5py.Dataset):
        raise SpanError(path, f"`{name}` is not a dataset", _FIX)
    try:
        return obj[()] if obj.shape == () else obj[:]
    except OSError as exc:
        raise SpanError(path, f"damaged dataset `{name}` ({exc})", _FIX) from exc


def _layout(f: h5py.File, root: dict, coord_attrs: dict) -> str:
    """The source's toolkit: span (grid + root patch_size_level0), trident (its attrs) or clam."""
    if "grid" in f and "patch_size_level0" in root:
        return "span"
    if any(k in root or k in coord_attrs for k in _TRIDENT_KEYS):
        return "trident"
    return "clam"


def _check_arrays(
    path: str | Path, features: np.ndarray, coords: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Features N x D (a leading 1 squeezed), coords N x 2, numeric, finite, non-negative."""
    if features.ndim == 3 and features.shape[0] == 1:
        features = features[0]
    if coords.ndim == 3 and coords.shape[0] == 1:
        coords = coords[0]
    if coords.size == 0:
        coords = coords.reshape(0, 2)
    if features.size == 0 and features.ndim == 1:
        features = features.reshape(0, 0)
    if features.ndim != 2:
        raise SpanError(path, f"features must be N x D, got shape {features.shape}", _FIX)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise SpanError(path, f"coords must be N x 2, got shape {coords.shape}", _FIX)
    if len(features) != len(coords):
        raise SpanError(path, f"{len(features)} feature rows but {len(coords)} coordinates", _FIX)
    for name, arr in (("features", features), ("coords", coords)):
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise SpanError(path, f"{name} are not numeric (dtype {arr.dtype})", _FIX)
    bad_rows = int(np.count_nonzero(~np.isfinite(features).all(axis=1)))
    if bad_rows:
        raise SpanError(path, f"{bad_rows} feature rows contain NaN or inf", _FIX)
    if not np.isfinite(coords).all():
        raise SpanError(path, "coords contain NaN or inf", _FIX)
    if (coords < 0).any():
        n_neg = int((coords < 0).any(axis=1).sum())
        raise SpanError(path, f"{n_neg} patches have negative coordinates", _FIX)
    return features, coords


def _number(value: object) -> float | None:
    """A numeric attribute (scalar or one-element array) as float, else None."""
    arr = np.asarray(value).reshape(-1)
    if arr.size == 0 or not np.issubdtype(arr.dtype, np.number):
        return None
    return float(arr[0])


def _ps0_from_file(root: dict, coord_attrs: dict) -> tuple[float | None, str]:
    """The file's level-0 patch size and where it came from (None if it does not say)."""
    merged = {**coord_attrs, **root}  # root wins over coords attrs
    if "patch_size_level0" in merged:
        return _number(merged["patch_size_level0"]), "attribute patch_size_level0"
    size = _number(merged.get("patch_size"))
    if size is None:
        return None, ""
    downsample = _number(merged.get("downsample"))
    if downsample is not None:
        return size * downsample, "patch_size x downsample"
    if _number(merged.get("patch_level")) == 0:
        return size, "patch_size at patch_level 0"
    mag0 = _number(merged.get("level0_magnification"))
    target = _number(merged.get("target_magnification"))
    if mag0 and target:
        return size * mag0 / target, "patch_size x level0/target magnification"
    return None, ""


def _patch_size_level0(
    path: str | Path, root: dict, coord_attrs: dict, configured: int | None
) -> tuple[int, list[str]]:
    """Level-0 patch size: the file's attributes, else the config; disagreement is a warning."""
    value, origin = _ps0_from_file(root, coord_attrs)
    warnings = []
    if value is None and configured is None:
        raise SpanError(
            path, "level-0 patch size unknown (no patch_size_level0 or CLAM patch attrs)", _PS0_FIX
        )
    if value is None:
        value, origin = float(configured), "config"
    if not np.isfinite(value) or round(value) <= 0:
        fix = _PS0_FIX if origin == "config" else f"correct the file's attributes ({origin})"
        raise SpanError(path, f"invalid level-0 patch size {value:g} (from {origin})", fix)
    ps0 = round(value)
    if origin != "config" and configured is not None and int(configured) != ps0:
        warnings.append(
            f"patch_size_level0 {ps0} from the file ({origin}) overrides {int(configured)} "
            "from the config (features.import_patch_size_level0)"
        )
    return ps0, warnings


def _to_global_grid(
    coords: np.ndarray, ps0: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(coords, grid, kept row indices, warnings) on the global grid, one patch per cell.

    Off-grid coordinates snap to the nearest cell; of patches sharing a cell the one nearest
    to its origin is kept (ties: lowest row).
    """
    n = len(coords)
    if np.issubdtype(coords.dtype, np.integer):
        c = coords.astype(np.int64)
        aligned = bool((c % ps0 == 0).all())
        grid = c // ps0 if aligned else (2 * c + ps0) // (2 * ps0)  # floor(c / ps0 + 0.5)
    else:
        c = coords.astype(np.float64)
        aligned = bool((c % ps0 == 0).all())
        grid = np.floor(c / ps0 + 0.5).astype(np.int64)
    offset = c - grid * ps0
    keep = _nearest_per_cell(grid, (offset.astype(np.float64) ** 2).sum(axis=1))
    dropped = n - len(keep)
    warnings = []
    if not aligned:
        moved = int(np.count_nonzero((offset != 0).any(axis=1)))
        warnings.append(
            f"snapped {moved} of {n} patches to the global {ps0}-px grid; "
            f"{dropped} collided and were dropped (kept the nearest)"
        )
    elif dropped:
        warnings.append(f"{dropped} of {n} patches repeated a grid cell and were dropped")
    new_coords = grid[keep] * ps0
    return new_coords, coords_to_grid(new_coords, ps0), keep, warnings


def _nearest_per_cell(grid: np.ndarray, dist2: np.ndarray) -> np.ndarray:
    """Sorted row indices keeping, per grid cell, the smallest `dist2` (ties: lowest row)."""
    n = len(grid)
    if n == 0:
        return np.zeros(0, np.int64)
    cell = grid[:, 1] * (int(grid[:, 0].max()) + 1) + grid[:, 0]
    order = np.lexsort((np.arange(n), dist2, cell))
    first = np.ones(n, bool)
    first[1:] = cell[order][1:] != cell[order][:-1]
    return np.sort(order[first])


def _bad_tiles(bad: np.ndarray | None) -> np.ndarray:
    """A SPAN source's unreadable tiles (level-0 coords, K x 2; none from other layouts or
    from files of versions that stored row numbers)."""
    if bad is None or bad.ndim != 2 or bad.shape[1] != 2:
        return np.zeros((0, 2), np.int64)
    return bad.astype(np.int64)


def _copied_attrs(root: dict) -> dict:
    """A SPAN source's scalar and string root attributes, less those the import sets."""
    return {
        k: v
        for k, v in root.items()
        if k not in _OWN_KEYS and isinstance(v, (str, int, float, bool))
    }


def _provenance(
    root: dict, feat_attrs: dict, key: str, given: str | None, default: str
) -> tuple[str, list[str]]:
    """(value, warnings): the file's root (or `features`) attribute `key`, else `given` (the
    config's), else `default`; a file recording another value than `given` keeps its own."""
    value = root.get(key, feat_attrs.get(key))
    if value is None or str(value) == default:  # `default` = unrecorded, as an import writes it
        return (default if given is None else given), []
    if given is not None and str(value) != given:
        return str(value), [
            f"the file records {key} {str(value)!r}, kept over {given!r} "
            f"(features.import_{key}, meant for files that do not record one)"
        ]
    return str(value), []


def run_import_batch(
    slides: Sequence[tuple[str, str | Path]],
    store: SlideStore,
    manifest: str | Path,
    patch_size_level0: int | None = None,
    encoder: str | None = None,
    layer: str | None = None,
    strict: bool = False,
) -> list[SlideOutcome]:
    """Import many slides' features files (id, source) into `store` and write the manifest. A
    file that cannot be imported gets an empty features file recording why (the QC summary
    excludes the slide) unless `strict`."""
    options = [patch_size_level0, encoder, layer]

    def item(slide_id: str, src: str | Path) -> BatchItem:
        def make(files: dict[str, Path]) -> str:
            fs = import_features(src, files[".h5"], slide_id, *options)
            return f"{len(fs)} patches"

        def exclude(files: dict[str, Path], error: SpanError) -> None:
            attrs = {
                "slide_id": slide_id,
                "source": str(src),
                "error": f"{error.reason}; {error.fix}",
            }
            empty = np.zeros((0, 2), np.int64)
            write_feature_file(
                files[".h5"], FeatureSet(np.zeros((0, 0), np.float32), empty, empty, empty, attrs)
            )

        try:
            key = key_of("import", slide_id, file_identity(src), options)
        except OSError:  # gone since the workflow checked it: import_features says why
            key = key_of("import", slide_id, str(src), "unreadable")
        return BatchItem(slide_id, key, make, exclude)

    items = [item(slide_id, src) for slide_id, src in slides]
    return run_batch(items, store, manifest, (".h5",), strict)
