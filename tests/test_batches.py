"""Batch jobs: how slides are grouped, the store of finished slides, and reuse on re-runs."""

from __future__ import annotations

import math

import pytest

from span.batches import (
    BatchItem,
    SlideStore,
    batch_of,
    key_of,
    read_manifest,
    run_batch,
    slide_batches,
)
from span.errors import SpanError


def test_batches_cover_every_slide_once_in_balanced_sorted_groups():
    ids = [f"s{i:03d}" for i in range(103)]
    labelled = ids[:70]
    batches = slide_batches(reversed(ids), labelled, per_job=20)
    assert [name for name in batches] == [
        *(f"labelled-{i}" for i in range(1, 5)),
        *(f"unlabelled-{i}" for i in range(1, 3)),
    ]
    members = [s for slides in batches.values() for s in slides]
    assert sorted(members) == ids and len(members) == len(set(members))
    for group, n in (("labelled", 70), ("unlabelled", 33)):
        sizes = [len(v) for k, v in batches.items() if k.startswith(group)]
        assert len(sizes) == math.ceil(n / 20) and max(sizes) - min(sizes) <= 1
    for slides in batches.values():
        assert slides == sorted(slides)
        assert len({s in labelled for s in slides}) == 1  # never mixed
    assert batch_of(batches)["s000"] == "labelled-1"


def test_an_unlabelled_slide_added_leaves_the_labelled_batches_as_they_were():
    ids = [f"s{i:03d}" for i in range(60)]
    before = slide_batches(ids, ids[:40], per_job=15)
    after = slide_batches([*ids, "s999"], ids[:40], per_job=15)
    assert {k: v for k, v in after.items() if k.startswith("labelled")} == {
        k: v for k, v in before.items() if k.startswith("labelled")
    }


def test_no_slides_no_batches_and_bad_size_refused():
    assert slide_batches([], [], per_job=5) == {}
    with pytest.raises(ValueError, match=">= 1"):
        slide_batches(["a"], [], per_job=0)


def _item(slide_id, key, calls, fail=False):
    def make(files):
        calls.append(slide_id)
        if fail:
            raise SpanError(f"{slide_id}.svs", "cannot read region", "re-scan it")
        files[".txt"].write_text(f"made {slide_id}")
        return "ok"

    def exclude(files, error):
        files[".txt"].write_text(f"excluded: {error.reason}")

    return BatchItem(slide_id, key, make, exclude)


def test_run_batch_reuses_stored_slides_and_redoes_changed_ones(tmp_path):
    store = SlideStore(tmp_path / ".store")
    calls: list[str] = []
    items = [_item("a", key_of(1), calls), _item("b", key_of(2), calls)]
    first = run_batch(items, store, tmp_path / "m1.tsv", (".txt",))
    assert [o.status for o in first] == ["made", "made"] and calls == ["a", "b"]
    assert store.path("a", ".txt").read_text() == "made a"

    calls.clear()
    items = [_item("a", key_of(1), calls), _item("b", key_of("new"), calls), _item("c", "k", calls)]
    second = run_batch(items, store, tmp_path / "m2.tsv", (".txt",))
    assert calls == ["b", "c"]
    assert [(o.slide_id, o.status) for o in read_manifest(tmp_path / "m2.tsv")] == [
        ("a", "reused"),
        ("b", "made"),
        ("c", "made"),
    ]
    assert [o.status for o in second] == ["reused", "made", "made"]
    assert not [p for p in store.folder.iterdir() if ".tmp-" in p.name]


def test_a_slide_that_fails_is_excluded_unless_strict(tmp_path):
    store = SlideStore(tmp_path / ".store")
    calls: list[str] = []
    items = [_item("bad", "k1", calls, fail=True), _item("good", "k2", calls)]
    outcomes = run_batch(items, store, tmp_path / "m.tsv", (".txt",))
    assert [o.status for o in outcomes] == ["excluded", "made"]
    assert "cannot read region" in outcomes[0].detail
    assert store.path("bad", ".txt").read_text() == "excluded: cannot read region"
    assert store.lookup("bad", "k1", (".txt",)) == "excluded"

    # strict: a stored exclusion is retried, and the error stops the batch
    calls.clear()
    with pytest.raises(SpanError, match="cannot read region"):
        run_batch(items, store, tmp_path / "m2.tsv", (".txt",), strict=True)
    assert calls == ["bad"]
    assert store.lookup("good", "k2", (".txt",)) == "made"  # kept for the next run


def test_store_forgets_a_slide_whose_file_is_gone_or_key_differs(tmp_path):
    store = SlideStore(tmp_path / ".store")
    tmp = store.temp_path("a", ".h5")
    tmp.write_text("x")
    store.commit("a", "k", "made", {".h5": tmp})
    assert store.lookup("a", "k", (".h5",)) == "made"
    assert store.lookup("a", "other", (".h5",)) is None
    assert store.lookup("a", "k", (".h5", ".png")) is None
    store.invalidate("a")
    assert store.lookup("a", "k", (".h5",)) is None
