"""Training: learning a learnable task, determinism, checkpoint round trip, cohort checks."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from span.data.splits import SplitRow, read_splits, write_splits
from span.errors import SpanError
from span.features.feature_file import FeatureSet, read_feature_file, write_feature_file
from span.models import build_model
from span.training.bags import Bag, FeatureStats, feature_statistics, inspect_cohort
from span.training.feeder import BagFeeder
from span.training.run import TrainingJob, run_training, split_bags
from span.training.trainer import TrainConfig, predict

DIM = 16


def synthetic_slide(rng: np.random.Generator, positive: bool, dim: int = DIM):
    """A blob of 40-70 cells; positives carry a clustered island of shifted features."""
    side = 12
    cells = np.array(
        [
            (x, y)
            for y in range(side)
            for x in range(side)
            if (x - 6) ** 2 + (y - 6) ** 2 < rng.uniform(12, 22)
        ]
    )
    features = rng.normal(size=(len(cells), dim)).astype(np.float32)
    if positive:
        cx, cy = rng.integers(3, 9, size=2)
        island = (cells[:, 0] - cx) ** 2 + (cells[:, 1] - cy) ** 2 <= 4
        features[island, :4] += 1.5
    return features, cells


def write_cohort(root, n_slides: int, seed: int = 0, dim: int = DIM, empty: str | None = None):
    """Features files and a splits.tsv: two thirds train, then val and test alternating."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_slides):
        sid = f"s{i:03d}"
        label = "tumor" if i % 2 else "normal"
        features, cells = synthetic_slide(rng, i % 2 == 1, dim)
        if sid == empty:
            features, cells = features[:0], cells[:0]
        attrs = {
            "encoder": "synthetic",
            "layer": "x",
            "weights": "random",
            "patch_size_level0": 224,
        }
        write_feature_file(
            root / "features" / f"{sid}.h5",
            FeatureSet(features, cells * 224, cells, np.zeros(0), attrs),
        )
        split = "train" if i < 2 * n_slides // 3 else ("val" if i % 4 < 2 else "test")
        rows.append(SplitRow(sid, "", label, split))
    write_splits(rows, root / "splits.tsv")
    return root / "splits.tsv", root / "features"


def train_abmil(splits, features, config: TrainConfig, out):
    """ABMIL on the synthetic cohort, on the CPU."""
    return run_training(
        TrainingJob(splits, features, ["normal", "tumor"], "abmil", out, config, device="cpu")
    )


SMALL_SPAN = {"embed_dim": 32, "heads": 4, "window_side": 4}


def test_span_learns_a_learnable_task(tmp_path):
    splits, features = write_cohort(tmp_path, 60)
    config = TrainConfig(epochs=15, patience=15, lr=1e-3, seed=0)
    job = TrainingJob(splits, features, ["normal", "tumor"], "span", tmp_path / "run", config)
    metrics = run_training(replace(job, hparams=SMALL_SPAN, device="cpu"))
    with (tmp_path / "run" / "test_predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    correct = [(float(r["prob_tumor"]) > 0.5) == (r["label"] == "tumor") for r in rows]
    assert len(rows) >= 8 and np.mean(correct) >= 0.8
    assert metrics["best_epoch"] >= 1 and metrics["peak_memory_kind"] == "peak RSS (CPU)"
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,train_loss,val_loss,val_auc")


def test_same_seed_same_run_and_checkpoint_round_trip(tmp_path):
    splits, features = write_cohort(tmp_path, 18)
    config = TrainConfig(epochs=3, patience=3, seed=7)
    for run in ("a", "b"):
        train_abmil(splits, features, config, tmp_path / run)
    assert (tmp_path / "a" / "history.csv").read_text().split("\n")[1].split(",")[:5] == (
        (tmp_path / "b" / "history.csv").read_text().split("\n")[1].split(",")[:5]
    )
    # byte-identical files (no temporary file's name in the archive), loadable as weights only
    for name in ("checkpoint.pt", "feature_stats.pt"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    # the run turned on deterministic kernels, warning (not failing) where an op has none
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()

    model = build_model("abmil", DIM, 2)
    model.load_state_dict(a)
    with (tmp_path / "a" / "test_predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    bags = [Bag(r["slide_id"], features / f"{r['slide_id']}.h5", None) for r in rows]
    probs = predict(model, bags, BagFeeder(DIM, torch.device("cpu")))
    expected = np.array([[float(r["prob_normal"]), float(r["prob_tumor"])] for r in rows])
    np.testing.assert_allclose(probs, expected, atol=1e-6)


def test_metrics_json_and_teacher_runtime(tmp_path):
    splits, features = write_cohort(tmp_path, 12)
    config = TrainConfig(epochs=1, patience=1)
    teacher = train_abmil(splits, features, config, tmp_path / "abmil")
    hparams = {"teacher_checkpoint": str(tmp_path / "abmil" / "checkpoint.pt")}
    student = run_training(
        TrainingJob(
            splits,
            features,
            ["normal", "tumor"],
            "mhim",
            tmp_path / "mhim",
            config,
            hparams,
            device="cpu",
            add_runtime_of=tmp_path / "abmil" / "metrics.json",
        )
    )
    assert student["runtime_per_epoch_s"] > teacher["runtime_per_epoch_s"]
    assert "teacher (abmil" in student["runtime_note"]
    saved = json.loads((tmp_path / "mhim" / "metrics.json").read_text())
    for key in ("device", "parameters", "peak_memory_mb", "encoder_weights", "runtime_per_epoch_s"):
        assert key in saved
    assert saved["encoder_weights"] == "random" and saved["slides"]["train"] == 8


def test_empty_slides_are_excluded_with_a_reason(tmp_path):
    splits, features = write_cohort(tmp_path, 12, empty="s000")
    metrics = train_abmil(splits, features, TrainConfig(epochs=1, patience=1), tmp_path / "run")
    assert [tuple(x) for x in metrics["excluded"]] == [("s000", "no tissue patches")]
    assert metrics["slides"]["train"] == 7


def relabel(splits, slide_ids: set[str], label: str) -> None:
    """Give the slides `slide_ids` of a splits file `label`, as a split edited by hand."""
    rows = read_splits(splits)
    write_splits([replace(r, label=label) if r.slide_id in slide_ids else r for r in rows], splits)


def test_a_split_without_a_class_in_test_is_refused_before_training(tmp_path):
    splits, features = write_cohort(tmp_path, 12)  # test: s010 normal, s011 tumor
    relabel(splits, {"s011"}, "normal")
    with pytest.raises(SpanError) as err:
        train_abmil(splits, features, TrainConfig(epochs=1), tmp_path / "run")
    assert str(err.value) == (
        f"{splits}: the test set has no 'tumor' slide (slides per class: train normal 4, "
        "tumor 4; val normal 1, tumor 1; test normal 2, tumor 0). Fix: label more patients of "
        "'tumor' (a class needs 2 to reach train and test, 3 to reach validation too), raise "
        "splits.test_fraction, or put some in test with the sheet's split column"
    )
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_class_missing_from_validation_is_recorded_for_the_report(tmp_path):
    splits, features = write_cohort(tmp_path, 12)  # val: s008 normal, s009 tumor
    relabel(splits, {"s009"}, "normal")
    metrics = train_abmil(splits, features, TrainConfig(epochs=1), tmp_path / "run")
    (warning,) = metrics["split_warnings"]
    assert warning.startswith("validation has no 'tumor' slide (slides per class: train normal")
    assert "early stopping and the checkpoint kept go by validation loss alone" in warning
    assert np.isnan(metrics["best_val_auc"])


def test_mixed_feature_widths_are_one_clear_error(tmp_path):
    splits, features = write_cohort(tmp_path, 6)
    rng = np.random.default_rng(1)
    f, cells = synthetic_slide(rng, True, dim=32)
    write_feature_file(
        features / "s001.h5",
        FeatureSet(f, cells * 224, cells, np.zeros(0), {"encoder": "other", "layer": "y"}),
    )
    with pytest.raises(SpanError, match="mix encoders or widths") as err:
        train_abmil(splits, features, TrainConfig(epochs=1), tmp_path / "run")
    assert "\n" not in str(err.value)


def write_kind(path, encoder: str, layer: str, dim: int = DIM) -> Bag:
    """A one-patch features file recording `encoder` and `layer`, as a bag."""
    cells = np.zeros((1, 2), np.int64)
    attrs = {"encoder": encoder, "layer": layer}
    features = np.zeros((1, dim), np.float32)
    write_feature_file(path, FeatureSet(features, cells, cells, np.zeros((0, 2)), attrs))
    return Bag(path.stem, path, 0)


def test_imported_files_without_an_encoder_name_it_and_the_config_keys(tmp_path):
    bags = [write_kind(tmp_path / f"ext{i}.h5", "resnet50", "layer3") for i in range(2)]
    bags += [write_kind(tmp_path / f"clam{i}.h5", "imported", "") for i in range(4)]
    with pytest.raises(SpanError) as err:
        inspect_cohort(bags)
    assert str(err.value) == (
        "4 slide(s) (e.g. clam0, clam1, clam2) come from imported features files that do not "
        "record their encoder and layer, so they cannot be matched with the others "
        "(resnet50 layer3 16-d: 2 slide(s), e.g. ext0; imported 16-d: 4 slide(s), e.g. clam0). "
        "Fix: set features.import_encoder: resnet50 and features.import_layer: layer3 in the "
        "config if that is what made those files, or re-export them with `encoder` and `layer` "
        "attributes"
    )
    # Recorded encoders that differ, or widths that differ, are a genuine mix.
    other = write_kind(tmp_path / "uni.h5", "uni", "layer3")
    wide = write_kind(tmp_path / "wide.h5", "imported", "", dim=2 * DIM)
    for extra in (other, wide):
        with pytest.raises(SpanError, match=r"mix encoders or widths.*Fix: extract every slide"):
            inspect_cohort([*bags, extra])


def test_unknown_hyperparameter_is_one_clear_error(tmp_path):
    splits, features = write_cohort(tmp_path, 12)
    with pytest.raises(SpanError, match="no hyperparameter"):
        run_training(
            TrainingJob(
                splits,
                features,
                ["normal", "tumor"],
                "span",
                tmp_path / "run",
                TrainConfig(epochs=1),
                {"window": 4},
                device="cpu",
            )
        )


def test_standardisation_uses_training_statistics(tmp_path):
    splits, features = write_cohort(tmp_path, 12)
    train = split_bags(splits, features, ["normal", "tumor"])[0]["train"]
    stats = feature_statistics(train, DIM)
    stacked = np.concatenate([read_feature_file(b.features).features for b in train])
    np.testing.assert_allclose(stats.mean, stacked.mean(0), atol=1e-5)
    np.testing.assert_allclose(stats.std, stacked.std(0), atol=1e-5)

    config = TrainConfig(epochs=1, patience=1, standardize=True)
    train_abmil(splits, features, config, tmp_path / "run")
    saved = FeatureStats.load(tmp_path / "run" / "feature_stats.pt")
    torch.testing.assert_close(saved.mean, stats.mean)


def test_augmentation_in_training_steps_only(tmp_path, monkeypatch):
    """Every training step sees an augmented grid (flips, translation) and every validation
    or test forward pass the slide's own: predictions are deterministic."""
    from span.models.span import SPAN

    splits, features = write_cohort(tmp_path, 12)
    stored = {
        read_feature_file(p).grid.astype(np.int64).tobytes() for p in sorted(features.glob("*.h5"))
    }
    seen = {True: [], False: []}
    forward = SPAN.forward

    def spy(self, feats, grid):
        seen[self.training].append(grid.cpu().numpy().astype(np.int64).tobytes())
        return forward(self, feats, grid)

    monkeypatch.setattr(SPAN, "forward", spy)
    config = TrainConfig(epochs=2, patience=2, seed=0)
    job = TrainingJob(splits, features, ["normal", "tumor"], "span", tmp_path / "run", config)
    run_training(replace(job, hparams=SMALL_SPAN, device="cpu"))
    assert seen[False] and all(g in stored for g in seen[False])
    moved = sum(g not in stored for g in seen[True])
    assert moved >= 0.75 * len(seen[True])

    # `span predict` with the run's checkpoint: the slides' own grids again, and the test
    # slides' probabilities as training wrote them
    from span.inference.predict import PredictionJob, run_prediction

    seen[False].clear()
    sheet = tmp_path / "samples.tsv"
    ids = sorted(p.stem for p in features.glob("*.h5"))
    sheet.write_text("slide_id\tpath\tlabel\n" + "".join(f"{i}\t/nowhere/{i}.svs\t\n" for i in ids))
    out = tmp_path / "predictions.csv"
    run_prediction(
        PredictionJob(
            sheet, ["normal", "tumor"], features, "span", [tmp_path / "run"], out, SMALL_SPAN
        )
    )
    assert len(seen[False]) == len(ids) and all(g in stored for g in seen[False])
    with (tmp_path / "run" / "test_predictions.csv").open() as f:
        tested = {r["slide_id"]: float(r["prob_tumor"]) for r in csv.DictReader(f)}
    with out.open() as f:
        predicted = {r["slide_id"]: float(r["prob_tumor"]) for r in csv.DictReader(f)}
    assert tested and all(abs(predicted[k] - v) < 1e-5 for k, v in tested.items())
