"""Slide-level models behind one contract (`span.models.base`), built by name.

`build_model(name, in_dim, n_classes, **hparams)`; `MODELS` lists the registered names.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from span.models.abmil import ABMIL
from span.models.base import MILModel, ModelOutput
from span.models.clam import CLAM_MB, CLAM_SB
from span.models.dtfd import DTFD
from span.models.mhim import MHIM
from span.models.span import SPAN
from span.models.transmil import TransMIL

MODELS: dict[str, Callable[..., MILModel]] = {
    "span": SPAN,
    "abmil": ABMIL,
    "clam_sb": CLAM_SB,
    "clam_mb": CLAM_MB,
    "dtfd": DTFD,
    "mhim": MHIM,
    "transmil": TransMIL,
}


def build_model(name: str, in_dim: int, n_classes: int, **hparams) -> MILModel:
    """Instantiate a registered model; unknown names and hyperparameters are clear errors."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    accepted = set(inspect.signature(MODELS[name]).parameters) - {"in_dim", "n_classes"}
    unknown = sorted(set(hparams) - accepted)
    if unknown:
        raise ValueError(f"{name} has no hyperparameter {unknown}; it takes {sorted(accepted)}")
    return MODELS[name](in_dim, n_classes, **hparams)


__all__ = ["MODELS", "MILModel", "ModelOutput", "build_model"]
