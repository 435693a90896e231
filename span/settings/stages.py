"""The options of each stage: one settings class per command, the one declaration of each
config key's name, type, default, help and allowed values (see docs/architecture.md, "Adding
an option"). The command's flags, the stage's dataclass defaults and the workflow's mapping
from config keys to flags come from here; tests hold the schema and config/README.md to it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from span.settings.options import option

#: The accepted device values (span/device.py and the config schema have the same pattern).
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:[0-9]+)?)$"
_DEVICE_HELP = "auto (CUDA when present), cpu, cuda, cuda:N or mps"


@dataclass(frozen=True)
class DemoSettings:
    """The synthetic demo cohort (`span demo-slide`)."""

    generate: bool = option(
        False,
        "make the sheet's resources/demo/slides/<slide_id>.tiff slides (demo only)",
        flag=None,
    )
    seed: int = option(42, "seed of the demo slides' variation")


@dataclass(frozen=True)
class JobSettings:
    """How slides are packed into jobs (the workflow's batches), and what a slide that cannot
    be read does to its job (`span patch-batch`, `span extract-batch`)."""

    slides_per_job: int = option(
        50,
        "slides patched, encoded or imported by one job (one process: start-up paid once); "
        "on a cluster, one SLURM job each",
        ge=1,
        flag=None,
        speed_only=True,
    )
    strict: bool = option(
        False,
        "stop a job at the first slide that cannot be read (default: exclude that slide, "
        "record why, and go on with the others)",
        speed_only=True,  # the results of readable slides are the same either way
    )


@dataclass(frozen=True)
class PatchSettings:
    """Tissue segmentation and the global patch grid (`span patch`)."""

    target_mpp: float = option(0.5, "um/px of patches (0.5 = 20x)", gt=0)
    patch_size: int = option(224, "patch side in pixels at target_mpp", ge=16)
    min_tissue_fraction: float = option(
        0.25, "keep a grid cell when at least this fraction of it is tissue", gt=0, le=1
    )
    fallback_mpp: float | None = option(
        None,
        "um/px for slides with neither mpp nor objective power in their metadata (warned); "
        "unset: such slides fail",
        gt=0,
    )
    qc_max_side: int = option(1200, "longest side of the QC PNG, pixels", ge=64)
    preset: Literal["default", "clam"] = option(
        "default",
        "segmentation preset: default keeps small biopsies and removes pen ink, clam is CLAM's "
        "create_patches_fp; the options below override it when set",
    )
    seg_mpp: float | None = option(None, "um/px of the image segmented", gt=0)
    saturation_threshold: float | Literal["otsu"] | None = option(
        None, "otsu (Otsu on blurred saturation, clipped to [8, 20]) or 0-254", ge=0, le=254
    )
    median_blur: int | None = option(None, "odd median-blur kernel, pixels at seg_mpp", ge=1)
    close: int | None = option(None, "closing kernel, pixels at seg_mpp (0 = off)", ge=0)
    min_tissue_area_um2: float | None = option(
        None, "tissue regions smaller than this are dropped, um^2", ge=0
    )
    min_hole_area_um2: float | None = option(
        None, "holes in tissue smaller than this are filled, um^2", ge=0
    )
    exclude_pen: bool | None = option(None, "remove blue, green and black marker ink")


@dataclass(frozen=True)
class EncoderSettings:
    """Which encoder makes the features (`span extract`; checked against
    span/features/registry.py at start-up)."""

    encoder: str = option(
        "resnet50", "a name from `span encoders` (checked against span/features/registry.py)"
    )
    layer: str | None = option(
        None,
        "the encoder's output; null = its published one (resnet50: layer3, 1024-d, the SPAN "
        "authors' features; resnet18: layer4)",
    )
    weights: str = option(
        "imagenet",
        "imagenet (the ResNets: torchvision's IMAGENET1K_V2 for resnet50, V1 for resnet18), "
        "imagenet:<member> (e.g. IMAGENET1K_V1, CLAM's), hf-hub, hf-hub:<owner/name>, random "
        "or a checkpoint path",
        min_length=1,
    )


@dataclass(frozen=True)
class ExtractSettings:
    """How the features are computed and stored (`span extract`)."""

    dtype: Literal["float32", "float16"] = option(
        "float32", "storage precision of the features (float16 halves the disk)"
    )
    batch_size: int = option(32, "patches per encoder batch", ge=1, speed_only=True)
    num_workers: int | Literal["auto"] = option(
        "auto",
        "tile-reading worker processes (auto = none below 1000 patches, else half the CPUs; "
        "all but one when a GPU encodes)",
        ge=0,
        speed_only=True,
    )
    flush_every: int = option(
        256,
        "patches per resumable chunk (rounded to a multiple of batch_size)",
        ge=1,
        speed_only=True,
    )
    device: str = option("auto", _DEVICE_HELP, pattern=DEVICE_PATTERN, speed_only=True)
    amp: bool = option(True, "mixed precision on CUDA")
    threads: int = option(1, "CPU threads of one extraction job", ge=1, speed_only=True)


#: Below this many patches `auto` reads tiles in the encoding process: a spawned reader takes
#: 2-3 s and ~500 MB to start, more than it saves on a small slide.
AUTO_WORKERS_MIN_PATCHES = 1000


def usable_cpus() -> int:
    """CPUs this process may run on (a SLURM job's allocation, not the whole node)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def tile_workers(value: int | str, patches: int | None = None, gpu: bool = False) -> int:
    """`num_workers` as a count for `patches` patches: auto = none below
    AUTO_WORKERS_MIN_PATCHES, else half the usable CPUs (the other half encodes), or all but
    one when a GPU encodes (at least 1)."""
    if value != "auto":
        return int(value)
    if patches is not None and patches < AUTO_WORKERS_MIN_PATCHES:
        return 0
    cpus = usable_cpus()
    return max(1, cpus - 1 if gpu else cpus // 2)


@dataclass(frozen=True)
class ImportSettings:
    """Features files made elsewhere (CLAM, TRIDENT) that do not say how (`span
    import-features`)."""

    import_patch_size_level0: int | None = option(
        None,
        "patch side at level 0 for imported files that do not record it",
        ge=1,
        flag="--patch-size-level0",
    )
    import_encoder: str | None = option(
        None,
        "encoder that made imported features, recorded when the file does not say (CLAM's do "
        "not); a file that records its own keeps it, with a warning if it differs",
        flag="--encoder",
    )
    import_layer: str | None = option(
        None,
        "that encoder's output layer (layer3 for CLAM's 1024-d ResNet-50), recorded the same "
        "way; give both so the slides match ones extracted with that encoder and layer",
        flag="--layer",
    )


@dataclass(frozen=True)
class ExclusionSettings:
    """When a slide is left out (`span qc-summary`, `span split`)."""

    max_bad_tile_share: float = option(
        0.05,
        "exclude a slide when more than this share of its tiles could not be read",
        ge=0,
        le=1,
    )


@dataclass(frozen=True)
class SplitSettings:
    """The train/validation/test protocol (`span split`; `protocol` also `span evaluate`)."""

    protocol: Literal["fixed", "per_seed"] = option(
        "fixed",
        "fixed: one split for every training seed, the sheet's split column wins; per_seed: the "
        "sheet's split ignored (pooled), a new split per training seed (the SPAN authors')",
    )
    seed: int = option(
        42, "seed of the patient draw (per_seed: mixed with each training seed)", ge=0
    )
    test_fraction: float | None = option(
        None, "share of the patients in test (null: fixed 1/3, per_seed 0.15)", ge=0, lt=1
    )
    val_fraction: float | None = option(
        None,
        "share of the other patients in validation (null: fixed 0.15, per_seed 0.15/0.85, "
        "i.e. 15% of all)",
        ge=0,
        lt=1,
    )


@dataclass(frozen=True)
class TrainSettings:
    """The training protocol of every variant (`span train`; device also `span predict`)."""

    epochs: int = option(50, "most epochs", ge=1)
    patience: int = option(10, "epochs without a better validation AUC before stopping", ge=1)
    lr: float = option(1e-4, "AdamW learning rate", gt=0)
    weight_decay: float = option(5e-5, "AdamW weight decay", ge=0)
    class_weighted: bool = option(False, "cross-entropy weighted by inverse class frequency")
    cosine: bool = option(False, "cosine learning-rate schedule (per step, to 0 at the end)")
    warmup_epochs: float = option(
        0.0, "linear learning-rate warm-up over this many epochs (per step)", ge=0
    )
    min_epochs: int = option(0, "no early stop before this epoch", ge=0)
    flips: bool = option(True, "augment: one of the 8 rotations/reflections of the grid per step")
    translate: int = option(
        8, "augment: shift the grid by 0..N-1 cells per axis per step (0 = off)", ge=0
    )
    patch_drop: float = option(
        0.0, "augment: share of a slide's patches left out per step", ge=0, lt=1
    )
    affine: bool = option(
        False,
        "augment: the SPAN authors' coordinate augmentation (mirror, shear up to 10 degrees, "
        "rotation by k x 90 +- 30 degrees, each with p 0.75, strength decaying as a cosine "
        "over the epochs, re-gridded to integer cells)",
    )
    standardize: bool = option(
        False, "z-score every feature dimension with the training slides' mean and std"
    )
    device: str = option("auto", _DEVICE_HELP, pattern=DEVICE_PATTERN, speed_only=True)
    threads: int = option(1, "CPU threads of one training job", ge=1, speed_only=True)
    cache_mb: float = option(
        4096,
        "host memory, MB, for keeping slides' features between epochs (0 = read them every "
        "epoch); a job also predicts its test set from it",
        ge=0,
        speed_only=True,
    )


@dataclass(frozen=True)
class PredictSettings:
    """Predictions and heatmaps (`span predict`)."""

    heatmaps: list[str] = option(  # noqa: RUF009 (a field with a default_factory)
        [], "variants (of every experiment) that get attention heatmaps", flag=None
    )
    heatmap_max_side: int = option(
        1200,
        "longest side of a heatmap PNG, pixels, at most (a slightly smaller level is used as is)",
        ge=64,
    )
    heatmap_scores: Literal["auto", "attention", "gradient", "integrated_gradients"] = option(
        "auto",
        "patch scores of heatmaps and exports: auto (SPAN gradient x input, baselines their "
        "attention), the model's attention, gradient x input, or integrated gradients",
    )
    heatmap_top_k: int = option(
        8, "highest-scored patches shown as tiles under each heatmap (0 = none)", ge=0, le=32
    )


#: Config section -> the settings classes whose options it holds (each key in one of them).
SECTIONS: dict[str, tuple[type, ...]] = {
    "jobs": (JobSettings,),
    "demo": (DemoSettings,),
    "patching": (PatchSettings,),
    "features": (EncoderSettings, ExtractSettings, ImportSettings, ExclusionSettings),
    "splits": (SplitSettings,),
    "training": (TrainSettings,),
    "predict": (PredictSettings,),
}
