"""Atomic outputs, the patch file round trip, and sample-sheet parsing."""

from __future__ import annotations

from dataclasses import replace

import h5py
import numpy as np
import pytest

from span.atomic import atomic_output
from span.data.samplesheet import load_sample_sheet, missing_inputs
from span.errors import SpanError
from span.slides.patch_file import PatchSet, read_patch_file, write_patch_file


def test_failed_write_leaves_no_file_and_keeps_the_finished_one(tmp_path):
    out = tmp_path / "out.h5"
    with pytest.raises(RuntimeError), atomic_output(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert not out.exists() and list(tmp_path.iterdir()) == []

    out.write_text("finished")
    with pytest.raises(RuntimeError), atomic_output(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert out.read_text() == "finished" and list(tmp_path.iterdir()) == [out]


def test_patch_file_round_trip(tmp_path):
    grid = np.array([[3, 1], [0, 2]], np.int32)
    patches = PatchSet(
        coords=grid.astype(np.int64) * 448,
        grid=grid,
        tissue_fraction=np.array([0.5, 1.0], np.float32),
        attrs={"patch_size_level0": 448, "warnings": [], "level_dimensions": [[10, 20], [5, 10]]},
    )
    write_patch_file(tmp_path / "p.h5", patches)
    back = read_patch_file(tmp_path / "p.h5")
    np.testing.assert_array_equal(back.coords, patches.coords)
    np.testing.assert_array_equal(back.grid, grid)
    assert back.warnings == [] and back.attrs["patch_size_level0"] == 448
    np.testing.assert_array_equal(back.attrs["level_dimensions"], [[10, 20], [5, 10]])
    with h5py.File(tmp_path / "p.h5") as f:  # CLAM/TRIDENT readers see what they expect
        assert f["coords"].dtype == np.int64 and f["coords"].shape == (2, 2)


def test_truncated_patch_file_is_a_clear_error(tmp_path):
    path = tmp_path / "p.h5"
    write_patch_file(path, PatchSet(np.zeros((5, 2)), np.zeros((5, 2)), np.ones(5), {}))
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(SpanError, match=r"unreadable HDF5 file.*re-run"):
        read_patch_file(path)


def test_sample_sheet_optional_columns_and_feature_rows(tmp_path):
    sheet = tmp_path / "s.tsv"
    sheet.write_text(
        "slide_id\tpath\tlabel\tfeatures\tpatient\tsplit\textra\n"
        "a\ta.svs\tnormal\t\tP1\ttrain\tignored\n"
        "b\t\t\tb_feats.h5\tP1\t\t\n"
        "\n"
    )
    samples = load_sample_sheet(sheet, ["normal", "tumor"])
    assert [s.slide_id for s in samples] == ["a", "b"]
    assert samples[0].needs_patching and not samples[1].needs_patching
    assert samples[1].label == "" and samples[0].split == "train"
    missing = missing_inputs(samples, producible=lambda path, sid: path == "a.svs")
    assert missing == ["b: features file b_feats.h5 (does not exist)"]
    (tmp_path / "folder").mkdir()
    as_dir = [replace(samples[1], features=str(tmp_path / "folder"))]
    folder = tmp_path / "folder"
    assert missing_inputs(as_dir) == [f"b: features file {folder} (a directory, not a file)"]


def test_sample_sheet_reports_every_problem_at_once(tmp_path):
    sheet = tmp_path / "s.tsv"
    sheet.write_text("slide_id\tpath\tlabel\nx y\ta\tnormal\nb\t\tnormal\nc\tc\tcancer\n")
    with pytest.raises(SpanError) as err:
        load_sample_sheet(sheet, ["normal", "tumor"])
    message = str(err.value)
    assert "line 2" in message and "line 3" in message and "line 4" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "encode",
    [
        lambda text: b"\xef\xbb\xbf" + text.encode(),  # Excel's CSV UTF-8: a BOM
        lambda text: text.encode("utf-16"),  # Excel's Unicode Text: UTF-16 with a BOM
    ],
    ids=["utf-8-bom", "utf-16"],
)
def test_sample_sheet_from_excel_is_read_as_written(tmp_path, encode):
    sheet = tmp_path / "s.tsv"
    header = "slide_id\t path\xa0\tlabel"  # spaces and a non-breaking space around a name
    sheet.write_bytes(encode(f"{header}\r\na\ta.svs\tnormal\r\nb\tb.svs\ttumor\r\n"))
    samples = load_sample_sheet(sheet, ["normal", "tumor"])
    assert [(s.slide_id, s.path, s.label) for s in samples] == [
        ("a", "a.svs", "normal"),
        ("b", "b.svs", "tumor"),
    ]


def test_sample_sheet_header_trouble_is_shown_visibly(tmp_path):
    sheet = tmp_path / "s.tsv"
    sheet.write_text("slide_id\u200b\tpath\tlabel\na\ta.svs\tnormal\n", encoding="utf-8")
    with pytest.raises(SpanError) as err:
        load_sample_sheet(sheet, ["normal"])
    assert str(err.value) == (
        f"{sheet}: missing column(s) slide_id (found: 'slide_id\\u200b', 'path', 'label'). "
        "Fix: the sheet must be tab-separated with a header slide_id, path, label"
    )


def test_sample_sheet_in_a_windows_code_page_is_one_clear_error(tmp_path):
    sheet = tmp_path / "s.tsv"
    sheet.write_bytes("slide_id\tpath\tlabel\na\tdonn\u00e9es/a.svs\tnormal\n".encode("cp1252"))
    with pytest.raises(SpanError) as err:
        load_sample_sheet(sheet, ["normal"])
    message = str(err.value)
    assert message.startswith(f"{sheet}: not UTF-8 text (byte 0xe9;") and "Unicode Text" in message


def test_rgba_composites_on_white():
    from span.slides.reader import rgba_to_rgb

    rgba = np.array([[[10, 20, 30, 255], [10, 20, 30, 0], [0, 0, 0, 128]]], np.uint8)
    np.testing.assert_array_equal(
        rgba_to_rgb(rgba), [[[10, 20, 30], [255, 255, 255], [127, 127, 127]]]
    )
    opaque = rgba.copy()
    opaque[..., 3] = 255
    np.testing.assert_array_equal(rgba_to_rgb(opaque), opaque[..., :3])


def test_rgba_fully_transparent_pixels_become_white():
    from span.slides.reader import rgba_to_rgb

    rgba = np.array([[[10, 20, 30, 255], [40, 50, 60, 0]]], np.uint8)
    np.testing.assert_array_equal(rgba_to_rgb(rgba), [[[10, 20, 30], [255, 255, 255]]])


def test_subpixel_read_matches_openslide_resampling(tmp_path):
    """A region starting between two pixels of a coarser level: read aligned and shifted by
    OpenCV, within a grey level or two of openslide's own (slower) resampling."""
    import openslide

    from span.slides.reader import read_rgb, read_subpixel
    from span.slides.tiff_writer import write_pyramidal_tiff
    from span.synthetic.tissue import render_tissue

    image, *_ = render_tissue(1200, 1000, 0.5, tumour=True, seed=5)
    slide_path = write_pyramidal_tiff(tmp_path / "s.tiff", image, 0.5, downsamples=(1, 4))
    with openslide.OpenSlide(str(slide_path)) as slide:
        for location in [(0, 0), (6, 10), (401, 203.5)]:
            ours = read_subpixel(slide, slide_path, location, 1, (90, 70)).astype(int)
            theirs = read_rgb(slide, slide_path, location, 1, (90, 70)).astype(int)
            assert ours.shape == theirs.shape == (70, 90, 3)
            assert np.abs(ours - theirs).max() <= 2, location
