"""What each patch encoder is, in one torch-free declaration: the CLI, the workflow's start-up
check and docs/encoders.md's table read it (`span encoders`); `encoders.py` builds from it.

Every fact names its source (a model card or the model's own code); a fact that could not be
checked says so in `unconfirmed`. TRIDENT's loaders are cited at commit a91fa84 of
github.com/mahmoodlab/TRIDENT (trident/patch_encoder_models/load.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: H-optimus-0's colour statistics, from its hub config.json.
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)
_TRIDENT = "TRIDENT load.py @a91fa84"


@dataclass(frozen=True)
class Output:
    """One output of an encoder: its width and which activations make it."""

    dim: int
    pooling: str  # "cls", "cls_mean" (class token + mean of patch tokens), or a ResNet stage


@dataclass(frozen=True)
class EncoderInfo:
    """The published facts of one encoder."""

    name: str
    title: str  # architecture, in words
    family: str  # "torchvision" or "timm"
    arch: str  # torchvision/timm model name
    kwargs: dict = field(default_factory=dict)  # timm.create_model keyword arguments
    swiglu: bool = False  # mlp_layer=timm.layers.SwiGLUPacked, act_layer=torch.nn.SiLU
    outputs: dict[str, Output] = field(default_factory=dict)
    default_output: str = ""
    input_size: int = 224  # side of the square the encoder sees
    resize_to: int = 224  # the patch is resized to this side, then centre-cropped to input_size
    interpolation: str = ""  # of the published resize, when stated (span resizes with OpenCV)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    mpp: float | None = None  # micrometres per pixel the weights were trained at, if published
    hub_repo: str | None = None  # Hugging Face repository of the weights
    imagenet: str = ""  # torchvision's ImageNet weights as its enum member, e.g. IMAGENET1K_V1
    amp_dtype: str = "float16"  # CUDA autocast dtype (TRIDENT's); float32 = no autocast
    layout: str = "timm"  # tensor names of the published checkpoint: "timm" or "dinov2-hf"
    licence: str = ""
    source: str = ""
    unconfirmed: str = ""  # facts not checked against a primary source


def _vit(name: str, **facts) -> EncoderInfo:
    return EncoderInfo(name=name, family="timm", **facts)


def _resnet(name: str, widths: tuple[int, int], source: str) -> EncoderInfo:
    """A torchvision ResNet: `penultimate` (layer4) and `layer3` outputs of these widths."""
    return EncoderInfo(
        name=name,
        title=f"ResNet-{name.removeprefix('resnet')} (ImageNet)",
        family="torchvision",
        arch=name,
        outputs={"penultimate": Output(widths[0], "layer4"), "layer3": Output(widths[1], "layer3")},
        default_output="penultimate",
        # V1, not torchvision's DEFAULT (V2 for ResNet-50): the weights CLAM's extractor loads
        # (timm's resnet50.tv_in1k), so imported CLAM features and extracted ones agree.
        imagenet="IMAGENET1K_V1",
        licence="BSD-3-Clause (torchvision); open",
        source=source,
    )


#: The architecture and preprocessing H-optimus-0 and H-optimus-1 share.
_HOPTIMUS_VIT_G = {
    "arch": "vit_giant_patch14_reg4_dinov2",
    "kwargs": {"img_size": 224, "init_values": 1e-5, "num_classes": 0, "dynamic_img_size": True},
    "outputs": {"cls": Output(1536, "cls")},
    "default_output": "cls",
    "mean": HOPTIMUS_MEAN,
    "std": HOPTIMUS_STD,
}

ENCODERS: dict[str, EncoderInfo] = {
    e.name: e
    for e in (
        _resnet(
            "resnet50",
            (2048, 1024),
            source="torchvision ResNet50_Weights.IMAGENET1K_V1; 224 px without crop and "
            "layer3 = CLAM's extractor (github.com/mahmoodlab/CLAM)",
        ),
        _resnet(
            "resnet18",
            (512, 256),
            source="torchvision ResNet18_Weights.IMAGENET1K_V1; DSMIL's default backbone "
            "(github.com/binli123/dsmil-wsi compute_feats.py: --backbone resnet18, 512-d; "
            "ImageNet weights with --norm_layer batch; its SimCLR checkpoints have InstanceNorm "
            "layers, which this architecture refuses)",
        ),
        _vit(
            "uni",
            title="UNI, ViT-L/16",
            arch="vit_large_patch16_224",
            kwargs={
                "img_size": 224,
                "patch_size": 16,
                "init_values": 1e-5,
                "num_classes": 0,
                "dynamic_img_size": True,
            },
            outputs={"cls": Output(1024, "cls")},
            default_output="cls",
            interpolation="bilinear (torchvision's default)",
            hub_repo="MahmoodLab/UNI",
            licence="CC-BY-NC-ND 4.0, gated (accept the terms on Hugging Face)",
            source="huggingface.co/MahmoodLab/UNI; github.com/mahmoodlab/UNI README and "
            f"uni/get_encoder; {_TRIDENT} (Resize 224, CenterCrop 224, ImageNet mean/std)",
            unconfirmed="magnification (not stated in the model card)",
        ),
        _vit(
            "uni2-h",
            title="UNI2-h, ViT-H/14 with 8 registers, SwiGLU",
            arch="vit_giant_patch14_224",
            kwargs={
                "img_size": 224,
                "patch_size": 14,
                "depth": 24,
                "num_heads": 24,
                "init_values": 1e-5,
                "embed_dim": 1536,
                "mlp_ratio": 2.66667 * 2,
                "num_classes": 0,
                "no_embed_class": True,
                "reg_tokens": 8,
                "dynamic_img_size": True,
            },
            swiglu=True,
            outputs={"cls": Output(1536, "cls")},
            default_output="cls",
            interpolation="bilinear (torchvision's default)",
            hub_repo="MahmoodLab/UNI2-h",
            amp_dtype="bfloat16",
            licence="CC-BY-NC-ND 4.0, gated (accept the terms on Hugging Face)",
            source="huggingface.co/MahmoodLab/UNI2-h; github.com/mahmoodlab/UNI README; "
            f"{_TRIDENT} (timm kwargs, Resize 224, CenterCrop 224, ImageNet, bfloat16)",
            unconfirmed="magnification (not stated in the model card)",
        ),
        _vit(
            "virchow2",
            title="Virchow2, ViT-H/14 with 4 registers, SwiGLU",
            arch="vit_huge_patch14_224",
            kwargs={
                "img_size": 224,
                "init_values": 1e-5,
                "num_classes": 0,
                "reg_tokens": 4,
                "mlp_ratio": 5.3375,
                "global_pool": "",
                "dynamic_img_size": True,
            },
            swiglu=True,
            outputs={"cls_mean": Output(2560, "cls_mean"), "cls": Output(1280, "cls")},
            default_output="cls_mean",
            interpolation="bicubic",
            hub_repo="paige-ai/Virchow2",
            licence="CC-BY-NC-ND 4.0, gated (accept the terms on Hugging Face)",
            source="huggingface.co/paige-ai/Virchow2 (class token + mean of the patch tokens "
            "after the 4 registers = 2560-d); arXiv 2408.00738 (mixed 5x-40x training); "
            f"{_TRIDENT} (Resize 224 bicubic, ImageNet mean/std)",
            unconfirmed="licence and gating as recalled from the model card, not re-read here",
        ),
        _vit(
            "h-optimus-0",
            title="H-optimus-0, ViT-g/14 with 4 registers, SwiGLU",
            **_HOPTIMUS_VIT_G,
            hub_repo="bioptimus/H-optimus-0",
            licence="Apache-2.0",
            source="huggingface.co/bioptimus/H-optimus-0 config.json (architecture, 224 px, "
            f"class token, 1536-d, mean/std, licence); {_TRIDENT} (init_values=1e-5)",
            unconfirmed="magnification (0.5 um/px as recalled from the card) and gating",
        ),
        _vit(
            "h-optimus-1",
            title="H-optimus-1, ViT-g/14 with 4 registers, SwiGLU",
            **_HOPTIMUS_VIT_G,
            hub_repo="bioptimus/H-optimus-1",
            licence="gated (request access on Hugging Face); licence terms: see the model card",
            source=f"huggingface.co/bioptimus/H-optimus-1; {_TRIDENT} (same architecture, "
            "kwargs and mean/std as H-optimus-0)",
            unconfirmed="licence text and magnification",
        ),
        _vit(
            "h0-mini",
            title="H0-mini, ViT-B/14 with 4 registers, SwiGLU (distilled from H-optimus-0)",
            arch="vit_base_patch14_reg4_dinov2",
            kwargs={"img_size": 224, "num_classes": 0, "dynamic_img_size": True},
            swiglu=True,
            outputs={"cls": Output(768, "cls"), "cls_mean": Output(1536, "cls_mean")},
            default_output="cls",
            mean=HOPTIMUS_MEAN,
            std=HOPTIMUS_STD,
            hub_repo="bioptimus/H0-mini",
            licence="gated (request access on Hugging Face); licence terms: see the model card",
            source=f"huggingface.co/bioptimus/H0-mini; {_TRIDENT} (SwiGLUPacked + SiLU, "
            "class token or class token + mean of the patch tokens)",
            unconfirmed="the hub config.json (mlp_ratio here is timm's default 4; mean/std are "
            "H-optimus-0's; resize interpolation) and magnification; a checkpoint that does not "
            "fit is refused",
        ),
        _vit(
            "prov-gigapath",
            title="Prov-GigaPath tile encoder, ViT-g with 16-px patches, SwiGLU",
            arch="vit_giant_patch14_dinov2",
            kwargs={
                "img_size": 224,
                "in_chans": 3,
                "patch_size": 16,
                "embed_dim": 1536,
                "depth": 40,
                "num_heads": 24,
                "init_values": 1e-5,
                "mlp_ratio": 5.33334,
                "num_classes": 0,
                "dynamic_img_size": True,
            },
            outputs={"cls": Output(1536, "cls")},
            default_output="cls",
            resize_to=256,
            interpolation="bicubic",
            mpp=0.5,
            hub_repo="prov-gigapath/prov-gigapath",
            licence="gated (accept the terms on Hugging Face); licence terms: see the model card",
            source="huggingface.co/prov-gigapath/prov-gigapath (Resize 256 bicubic, "
            "CenterCrop 224, ImageNet mean/std); Xu et al., Nature 2024 (256-px tiles at "
            f"0.5 um/px); {_TRIDENT} (timm kwargs)",
            unconfirmed="licence text",
        ),
        _vit(
            "phikon-v2",
            title="Phikon-v2, ViT-L/16 (DINOv2)",
            arch="vit_large_patch16_224",
            kwargs={"img_size": 224, "patch_size": 16, "init_values": 1.0, "num_classes": 0},
            outputs={"cls": Output(1024, "cls")},
            default_output="cls",
            interpolation="bilinear (torchvision's default)",
            hub_repo="owkin/phikon-v2",
            amp_dtype="float32",
            layout="dinov2-hf",
            licence="Hugging Face tag `other`: LICENSE.pdf in the repository",
            source="huggingface.co/owkin/phikon-v2 (transformers Dinov2Model; "
            "last_hidden_state[:, 0] = 1024-d) and arXiv 2409.09173; "
            f"{_TRIDENT} (Resize 224, CenterCrop 224, ImageNet mean/std, float32); tensors "
            "renamed from transformers' layout to timm's by span/features/convert.py "
            "(tested against transformers' Dinov2Model)",
            unconfirmed="its config.json (ViT-L/16 with layer scale, no registers and a "
            "14 x 14 position grid are assumed: a checkpoint that differs is refused, never "
            "resampled), the licence terms, magnification, and whether it is gated",
        ),
    )
}


def encoder_info(name: str) -> EncoderInfo:
    """The registry entry; unknown names raise KeyError with the known ones."""
    if name not in ENCODERS:
        raise KeyError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    return ENCODERS[name]


def weights_kinds(info: EncoderInfo) -> list[str]:
    """The `features.weights` values an encoder accepts besides a local file."""
    kinds = ["random"]
    if info.imagenet:
        kinds.append("imagenet")
    if info.hub_repo:
        kinds += ["hf-hub", f"hf-hub:{info.hub_repo}"]
    return kinds


def markdown_table() -> str:
    """The encoder table of docs/encoders.md, generated from the registry."""
    rows = [
        "| encoder | architecture | outputs (`layer`: dim, pooling) | input | mean / std "
        "| weights | licence / access | not confirmed here |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in ENCODERS.values():
        outputs = ", ".join(
            f"`{k}`{'*' if k == e.default_output else ''}: {o.dim} ({o.pooling})"
            for k, o in e.outputs.items()
        )
        crop = (
            f"resize {e.resize_to}, crop {e.input_size}"
            if e.resize_to != e.input_size
            else (f"{e.input_size}")
        )
        mpp = f" at {e.mpp} um/px" if e.mpp else ""
        interp = f", {e.interpolation}" if e.interpolation else ""
        stats = "ImageNet" if e.mean == IMAGENET_MEAN else f"{e.mean} / {e.std}"
        weights = "imagenet" if e.imagenet else f"hf-hub (`{e.hub_repo}`)"
        rows.append(
            f"| `{e.name}` | {e.title} | {outputs} | {crop} px{mpp}{interp} "
            f"| {stats} | {weights} | {e.licence} | {e.unconfirmed or '-'} |"
        )
    return "\n".join(rows)
