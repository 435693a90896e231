"""Slide-level models behind one contract (`span.models.base`), built by name.

`build_model(name, in_dim, n_classes, **hparams)`; `MODELS` (from the torch-free
`span.models.registry`) holds each registered name's display name and class. Importing this
package does not import torch: the model modules load when a model is built.
"""

from __future__ import annotations

import importlib
import inspect

from span.models.registry import MODELS


def model_class(name: str) -> type:
    """The class registered under `name` (imports its module)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    module, cls = MODELS[name].class_path.split(":")
    return getattr(importlib.import_module(module), cls)


def build_model(name: str, in_dim: int, n_classes: int, **hparams):
    """Instantiate a registered model; unknown names and hyperparameters are clear errors."""
    cls = model_class(name)
    accepted = set(inspect.signature(cls).parameters) - {"in_dim", "n_classes"}
    unknown = sorted(set(hparams) - accepted)
    if unknown:
        raise ValueError(f"{name} has no hyperparameter {unknown}; it takes {sorted(accepted)}")
    return cls(in_dim, n_classes, **hparams)


__all__ = ["MODELS", "build_model", "model_class"]
