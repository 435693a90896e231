"""The registered models, importable without torch: the Snakefile checks the experiments
config against it at start-up, `span.models.build_model` builds from it and the report names
its methods by it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RegisteredModel:
    """A model behind the contract of `span.models.base`: its config name, its name in the
    report's tables, its class as "module:Class" (imported only when the model is built), and
    how long it trains relative to ABMIL (a scheduling hint: the longest jobs start first)."""

    name: str
    display_name: str
    class_path: str
    cost: int = 1


#: name -> entry of every model, in the order of the paper's tables.
MODELS: dict[str, RegisteredModel] = {
    m.name: m
    for m in (
        RegisteredModel("span", "SPAN", "span.models.span:SPAN", cost=4),
        RegisteredModel("abmil", "ABMIL", "span.models.abmil:ABMIL"),
        RegisteredModel("clam_sb", "CLAM-SB", "span.models.clam:CLAM_SB"),
        RegisteredModel("clam_mb", "CLAM-MB", "span.models.clam:CLAM_MB"),
        RegisteredModel("dtfd", "DTFD", "span.models.dtfd:DTFD"),
        RegisteredModel("mhim", "MHIM", "span.models.mhim:MHIM", cost=2),
        RegisteredModel("transmil", "TransMIL", "span.models.transmil:TransMIL", cost=5),
    )
}


def display_name(name: str) -> str:
    """The paper's name of a registered model, else `name` itself (a variant such as
    `abmil_relu` keeps its own)."""
    return MODELS[name].display_name if name in MODELS else name
