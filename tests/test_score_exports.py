"""Patch-score exports: a QuPath-readable GeoJSON of level-0 tiles with score measurements and
an HDF5 file of coords, grid and scores, both written atomically and read back with clear errors.
(Neither `geojson` nor `shapely` is in the environment: the GeoJSON is checked by hand.)"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from span.errors import SpanError
from span.inference import exports
from span.inference.exports import read_scores_h5, write_scores_geojson, write_scores_h5

PATCH0 = 512
GRID = np.array([[0, 0], [3, 1], [1, 2], [2, 2]])
COORDS = GRID * PATCH0 + np.array([100, 40])  # level-0 pixels, offset from the grid origin
SCORES = np.array([0.25, 3.5, -1.0, 0.75], np.float32)


def _signed_area(ring: list[list[int]]) -> float:
    """Shoelace area: positive for a counter-clockwise ring (x right, y up, as in RFC 7946)."""
    return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in itertools.pairwise(ring)) / 2


def test_geojson_is_a_feature_collection_of_level0_tiles_with_score_measurements(
    tmp_path: Path,
) -> None:
    path = tmp_path / "slide.geojson"
    meta = {"slide_id": "s1", "model": "span", "score": "attention", "seed": np.int64(3)}
    write_scores_geojson(path, COORDS, PATCH0, SCORES, properties=meta)
    doc = json.loads(path.read_text())
    assert doc["type"] == "FeatureCollection"
    assert doc["properties"] == {**meta, "seed": 3}
    assert len(doc["features"]) == len(SCORES)
    percentiles = []
    for feature, (x, y), score in zip(doc["features"], COORDS.tolist(), SCORES, strict=True):
        assert feature["type"] == "Feature"
        geometry, props = feature["geometry"], feature["properties"]
        assert geometry["type"] == "Polygon" and len(geometry["coordinates"]) == 1
        ring = geometry["coordinates"][0]
        s = PATCH0
        assert ring == [[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]
        assert all(isinstance(v, int) for point in ring for v in point)
        assert ring[0] == ring[-1] and _signed_area(ring) == s * s  # closed, counter-clockwise
        assert props["objectType"] == "tile"
        assert props["measurements"]["score"] == pytest.approx(float(score))
        percentiles.append(props["measurements"]["score percentile"])
    # -1.0 < 0.25 < 0.75 < 3.5: the lowest score is percentile 0, the highest 1.
    assert percentiles == [pytest.approx(p) for p in (1 / 3, 1.0, 0.0, 2 / 3)]

    write_scores_geojson(path, np.zeros((0, 2), np.int64), PATCH0, np.zeros(0))
    assert json.loads(path.read_text()) == {"type": "FeatureCollection", "features": []}


def test_h5_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "slide.h5"
    attrs = {"slide_id": "s1", "model": "span", "patch_size0": PATCH0, "mpp": 0.5}
    write_scores_h5(path, COORDS, GRID.astype(np.int32), SCORES, attrs)
    got = read_scores_h5(path)
    assert isinstance(got, exports.ScoreFile)
    np.testing.assert_array_equal(got.coords, COORDS)
    np.testing.assert_array_equal(got.grid, GRID)
    np.testing.assert_array_equal(got.scores, SCORES)
    assert got.coords.dtype == got.grid.dtype == np.int64 and got.scores.dtype == np.float32
    assert got.attrs == attrs


def _fail_h5_midway(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """A scores HDF5 write that dies after its datasets are written, before its attributes."""

    def boom(*args: object) -> None:
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(exports, "write_attrs", boom)
    write_scores_h5(path, COORDS[:2], GRID[:2], SCORES[:2], {"slide_id": "new"})


def _fail_geojson_midway(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """A GeoJSON write that dies after half of its text is on disk."""
    write_text = Path.write_text

    def half_then_boom(self: Path, text: str, *args: object, **kwargs: object) -> int:
        write_text(self, text[: len(text) // 2])
        raise OSError("killed mid-write")

    monkeypatch.setattr(Path, "write_text", half_then_boom)
    write_scores_geojson(path, COORDS[:2], PATCH0, SCORES[:2], {"slide_id": "new"})


@pytest.mark.parametrize("suffix", [".h5", ".geojson"])
def test_a_failed_write_keeps_the_finished_file_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    path = tmp_path / f"slide{suffix}"
    if suffix == ".h5":
        write_scores_h5(path, COORDS, GRID, SCORES, {"slide_id": "old"})
        with pytest.raises(RuntimeError, match="killed mid-write"):
            _fail_h5_midway(monkeypatch, path)
        monkeypatch.undo()
        kept = read_scores_h5(path)
        assert kept.attrs == {"slide_id": "old"}
        np.testing.assert_array_equal(kept.scores, SCORES)
    else:
        write_scores_geojson(path, COORDS, PATCH0, SCORES, {"slide_id": "old"})
        with pytest.raises(OSError, match="killed mid-write"):
            _fail_geojson_midway(monkeypatch, path)
        monkeypatch.undo()
        kept = json.loads(path.read_text())
        assert kept["properties"] == {"slide_id": "old"} and len(kept["features"]) == 4
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_truncated_or_missing_h5_is_one_span_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "slide.h5"
    write_scores_h5(path, COORDS, GRID, SCORES, {"slide_id": "s1"})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SpanError) as err:
        read_scores_h5(path)
    assert str(path) in str(err.value) and "re-run span predict" in str(err.value)
    assert "\n" not in str(err.value)
    missing = tmp_path / "none.h5"
    with pytest.raises(SpanError, match="file not found") as err:
        read_scores_h5(missing)
    assert str(missing) in str(err.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_are_a_value_error_and_write_nothing(tmp_path: Path, bad: float) -> None:
    scores = SCORES.copy()
    scores[1] = bad
    with pytest.raises(ValueError, match="non-finite"):
        write_scores_geojson(tmp_path / "s.geojson", COORDS, PATCH0, scores)
    with pytest.raises(ValueError, match="non-finite"):
        write_scores_h5(tmp_path / "s.h5", COORDS, GRID, scores, {})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("coords", "grid", "scores"),
    [
        (COORDS[:3], GRID, SCORES),  # coords N differs
        (COORDS, GRID[:3], SCORES),  # grid N differs
        (COORDS, GRID, SCORES[:3]),  # scores N differs
        (COORDS[:, :1], GRID, SCORES),  # coords not (N, 2)
        (COORDS, GRID, SCORES[:, None]),  # scores not (N,)
    ],
)
def test_mismatched_shapes_are_a_value_error_naming_them(
    tmp_path: Path, coords: np.ndarray, grid: np.ndarray, scores: np.ndarray
) -> None:
    with pytest.raises(ValueError, match=r"coords \(\d+, \d\).*scores \(\d+"):
        write_scores_h5(tmp_path / "s.h5", coords, grid, scores, {})
    if grid is GRID:
        with pytest.raises(ValueError, match=r"coords \(\d+, \d\), scores \(\d+"):
            write_scores_geojson(tmp_path / "s.geojson", coords, PATCH0, scores)
    assert list(tmp_path.iterdir()) == []
