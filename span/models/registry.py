"""The registered models by name, importable without torch (the Snakefile checks the
experiments config against it at start-up; `span.models.build_model` builds from it)."""

#: name -> "module:class" of every model behind the contract of `span.models.base`.
MODELS: dict[str, str] = {
    "span": "span.models.span:SPAN",
    "abmil": "span.models.abmil:ABMIL",
    "clam_sb": "span.models.clam:CLAM_SB",
    "clam_mb": "span.models.clam:CLAM_MB",
    "dtfd": "span.models.dtfd:DTFD",
    "mhim": "span.models.mhim:MHIM",
    "transmil": "span.models.transmil:TransMIL",
}
