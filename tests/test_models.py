"""The model contract shared by SPAN and every baseline: registry, outputs, loss, hooks."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest
import torch

from span.models import MODELS, build_model

PAPER_PARAMETERS = {
    "span": 2.37e6,
    "abmil": 0.59e6,
    "clam_sb": 0.79e6,
    "clam_mb": 0.79e6,
    "transmil": 2.67e6,
}


def test_every_model_class_is_registered():
    """A model class of span/models missing from the registry could not be trained by name,
    and a registered class path that names no model class could not be built."""
    import span.models
    from span.models.base import MILModel

    for module in pkgutil.iter_modules(span.models.__path__):
        importlib.import_module(f"span.models.{module.name}")

    def subclasses(cls: type) -> list[type]:
        return [c for sub in cls.__subclasses__() for c in (sub, *subclasses(sub))]

    concrete = {
        f"{c.__module__}:{c.__qualname__}"
        for c in subclasses(MILModel)
        if c.__module__.startswith("span.models.") and not c.__name__.startswith("_")
    }
    assert concrete == {m.class_path for m in MODELS.values()}


@pytest.mark.parametrize("name", sorted(PAPER_PARAMETERS))
def test_parameter_counts_match_table_1(name):
    count = sum(p.numel() for p in build_model(name, 1024, 2).parameters() if p.requires_grad)
    assert abs(count - PAPER_PARAMETERS[name]) / PAPER_PARAMETERS[name] < 0.10


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("n_classes", [2, 3])
def test_contract(name, n_classes):
    torch.manual_seed(0)
    model = build_model(name, 32, n_classes)
    grid = torch.stack([torch.arange(40) % 8, torch.arange(40) // 8], 1)
    features = torch.randn(40, 32)
    out = model(features, grid)
    assert out.logits.shape == (n_classes,) and out.patch_scores.shape == (40,)
    assert out.embedding.ndim == 1 and torch.isfinite(out.logits).all()
    loss = model.loss(out, torch.tensor(n_classes - 1), 0.3)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    model.grad_clip = 1e-3
    model.clip_gradients()
    for group in model.gradient_groups():
        grads = [p.grad for p in group if p.grad is not None]
        if grads:
            assert torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) <= 1e-3 + 1e-6
    model.after_step()


def test_class_weights_scale_the_loss():
    torch.manual_seed(0)
    model = build_model("abmil", 16, 2).eval()
    out = model(torch.randn(5, 16), torch.zeros(5, 2, dtype=torch.long))
    plain = model.loss(out, torch.tensor(1), 0.0)
    model.set_class_weights(torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(model.loss(out, torch.tensor(1), 0.0), 3 * plain)
    model.set_class_weights(None)
    torch.testing.assert_close(model.loss(out, torch.tensor(1), 0.0), plain)


def test_bad_model_names_and_hyperparameters():
    with pytest.raises(ValueError, match="unknown model 'gnn'"):
        build_model("gnn", 16, 2)
    with pytest.raises(ValueError, match="no hyperparameter \\['windowside'\\]"):
        build_model("span", 16, 2, windowside=4)


def test_span_models_lists_every_model():
    res = subprocess.run(
        [sys.executable, "-m", "span", "models", "--in-dim", "1024"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    rows = {line.split()[0]: line.split()[1] for line in res.stdout.splitlines()[1:]}
    assert set(rows) == set(MODELS) and rows["abmil"] == "0.59M"


def test_registry_and_cli_parser_load_without_torch():
    """The Snakefile reads the registry and every `span` command builds the full parser: none
    of that may import torch (3 s and 600 MB per job)."""
    code = (
        "import sys; import span.models, span.cli; span.cli.build_parser(); "
        "assert 'torch' not in sys.modules, 'torch imported'; print(sorted(span.models.MODELS))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(sorted(MODELS))
