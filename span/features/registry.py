"""What each patch encoder is, in one torch-free declaration: the CLI, the workflow's start-up
check and docs/encoders.md's table read it (`span encoders`); `encoders.py` builds from it.

Every fact names its source (a model card or the model's own code); a fact that could not be
checked says so in `unconfirmed`. TRIDENT's loaders are cited at commit a91fa84 of
github.com/mahmoodlab/TRIDENT (trident/patch_encoder_models/load.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: H-optimus-0's colour statistics, from its hub config.json.
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)
#: kaiko.ai's (TRIDENT's constants; Midnight-12k's card) and Lunit's
#: (github.com/lunit-io/benchmark-ssl-pathology).
KAIKO_MEAN = KAIKO_STD = (0.5, 0.5, 0.5)
LUNIT_MEAN = (0.70322989, 0.53606487, 0.66096631)
LUNIT_STD = (0.21716536, 0.26081574, 0.20723464)
_TRIDENT = "TRIDENT load.py @a91fa84"
#: Resize filters, as PIL applies them (what torchvision's Resize does to a PIL image).
Interpolation = Literal["bilinear", "bicubic"]


@dataclass(frozen=True)
class Output:
    """One output of an encoder: its width and which activations make it."""

    dim: int
    #: "cls", "cls_mean" (class token + mean of patch tokens), "attn_pool" (CONCH's attentional
    #: pooler and LayerNorm over all tokens), or a ResNet stage
    pooling: str


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
    interpolation: Interpolation = "bilinear"  # of that resize, as published (PIL's filters)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    #: The published field: tiles of `patch_px` pixels at `mpp` um/px (when mpp is published,
    #: patching.patch_size and patching.target_mpp must match it; `field_problem`).
    patch_px: int = 224
    mpp: float | None = None
    hub_repo: str | None = None  # Hugging Face repository of the weights
    hub_file: str = ""  # its checkpoint file, when not model.safetensors / pytorch_model.bin
    #: torchvision's ImageNet weights (enum members) `weights: imagenet:<member>` accepts; the
    #: first is what `weights: imagenet` means.
    imagenet: tuple[str, ...] = ()
    amp_dtype: str = "float16"  # CUDA autocast dtype (TRIDENT's); float32 = no autocast
    #: tensor names of the published checkpoint: "timm" (as built here), "dinov2-hf"
    #: (transformers' Dinov2Model) or "dinov2-meta" (facebookresearch/dinov2 with registers)
    layout: str = "timm"
    head: str = ""  # "conch": the timm trunk inside CONCH v1.5's vision tower (encoders.py)
    licence: str = ""
    source: str = ""
    unconfirmed: str = ""  # facts not checked against a primary source


def _vit(name: str, **facts) -> EncoderInfo:
    return EncoderInfo(name=name, family="timm", **facts)


def _resnet(name: str, widths: tuple[int, int], default: str, **facts) -> EncoderInfo:
    """A torchvision ResNet: `layer3` and `layer4` (each stage average-pooled) of these
    widths, run in float32 as TRIDENT does."""
    return EncoderInfo(
        name=name,
        title=f"ResNet-{name.removeprefix('resnet')} (ImageNet)",
        family="torchvision",
        arch=name,
        outputs={"layer3": Output(widths[0], "layer3"), "layer4": Output(widths[1], "layer4")},
        default_output=default,
        amp_dtype="float32",
        licence="BSD-3-Clause (torchvision); open",
        **facts,
    )


#: Output names that are no longer accepted, and why.
RETIRED_OUTPUTS = {
    "penultimate": "'penultimate' is ambiguous: it meant layer4 (2048-d) here, but the SPAN "
    "paper's 'penultimate layer' is layer3 (1024-d) in its authors' feature code"
}


def unknown_output(info: EncoderInfo, layer: str) -> tuple[str, str]:
    """The reason and the fix of a `features.layer` the encoder does not have."""
    retired = ""
    if layer in RETIRED_OUTPUTS and info.family == "torchvision":  # a name the ResNets had
        retired = f" ({RETIRED_OUTPUTS[layer]})"
    return (
        f"{info.name} has no output {layer!r}{retired}",
        f"choose one of {', '.join(info.outputs)} (or null: {info.default_output})",
    )


def field_problem(info: EncoderInfo, patch_size: int, target_mpp: float) -> str | None:
    """Why patches of `patch_size` px at `target_mpp` um/px are not the field the encoder was
    trained on (None when they are, or when its resolution is not published)."""
    if info.mpp is None:
        return None
    if patch_size == info.patch_px and abs(target_mpp / info.mpp - 1) <= 0.05:
        return None
    seen = patch_size * target_mpp * info.input_size / info.resize_to
    published = info.patch_px * info.mpp * info.input_size / info.resize_to
    return (
        f"{info.name} was trained on {info.patch_px}-px tiles at {info.mpp} um/px (it sees "
        f"{published:.0f} um at {info.mpp * info.patch_px / info.resize_to:.3g} um/px); "
        f"{patch_size}-px patches at {target_mpp} um/px would show it {seen:.0f} um at "
        f"{target_mpp * patch_size / info.resize_to:.3g} um/px"
    )


def field_fix(info: EncoderInfo) -> str:
    """The fix of a `field_problem`: the patching keys to set."""
    return f"set patching.patch_size: {info.patch_px} and patching.target_mpp: {info.mpp}"


def imagenet_member(info: EncoderInfo, weights: str) -> str | None:
    """The torchvision weights `imagenet` (the entry's first) or `imagenet:<member>` names; ""
    when the encoder has no such weights, None when `weights` is not ImageNet's."""
    if weights != "imagenet" and not weights.startswith("imagenet:"):
        return None
    member = weights.partition(":")[2] or (info.imagenet[0] if info.imagenet else "")
    return member if member in info.imagenet else ""


#: The architecture and preprocessing Virchow and Virchow2 share (Virchow2 adds 4 registers).
_VIRCHOW_KWARGS = {
    "img_size": 224,
    "init_values": 1e-5,
    "num_classes": 0,
    "mlp_ratio": 5.3375,
    "global_pool": "",
    "dynamic_img_size": True,
}
_VIRCHOW_VIT_H = {
    "arch": "vit_huge_patch14_224",
    "swiglu": True,
    "outputs": {"cls_mean": Output(2560, "cls_mean"), "cls": Output(1280, "cls")},
    "default_output": "cls_mean",
    "interpolation": "bicubic",
}

#: The architecture and preprocessing H-optimus-0 and H-optimus-1 share.
_HOPTIMUS_VIT_G = {
    "arch": "vit_giant_patch14_reg4_dinov2",
    "kwargs": {"img_size": 224, "init_values": 1e-5, "num_classes": 0, "dynamic_img_size": True},
    "outputs": {"cls": Output(1536, "cls")},
    "default_output": "cls",
    "mean": HOPTIMUS_MEAN,
    "std": HOPTIMUS_STD,
}
_DSMIL = (
    "DSMIL's default backbone (github.com/binli123/dsmil-wsi compute_feats.py: --backbone "
    "resnet18, 512-d; ImageNet weights with --norm_layer batch; its SimCLR checkpoints have "
    "InstanceNorm layers, which this architecture refuses)"
)


def _kaiko(variant: str, arch: str, dim: int) -> EncoderInfo:
    """One of kaiko.ai's ViTs (DINO or DINOv2 on TCGA), as published for timm by 1aurent."""
    return _vit(
        f"kaiko-{variant}",
        title=f"Kaiko ViT-{variant[3].upper()}/{variant[4:]} (towards large pathology FMs)",
        arch=arch,
        kwargs={"img_size": 224, "num_classes": 0, "dynamic_img_size": True},
        outputs={"cls": Output(dim, "cls")},
        default_output="cls",
        mean=KAIKO_MEAN,
        std=KAIKO_STD,
        hub_repo=f"1aurent/{arch}.kaiko_ai_towards_large_pathology_fms",
        amp_dtype="float32",
        licence="kaiko non-commercial (Hugging Face tag `other`: kaiko-non-commercial)",
        source=f"huggingface.co/1aurent/{arch}.kaiko_ai_towards_large_pathology_fms (timm "
        f"architecture, licence); arXiv 2404.15217; {_TRIDENT} (class token = timm's token "
        "pool, Resize 224 bilinear, CenterCrop 224, mean/std 0.5, float32)",
        unconfirmed="the hub config.json (timm's default arguments of the architecture are "
        "assumed: a checkpoint that differs is refused), magnification (trained at several), "
        "whether the repository is gated",
    )


ENCODERS: dict[str, EncoderInfo] = {
    e.name: e
    for e in (
        _resnet(
            "resnet50",
            (1024, 2048),
            "layer3",
            imagenet=("IMAGENET1K_V2", "IMAGENET1K_V1"),
            source="the SPAN authors' feature code (github.com/wwyi1828/PatchPreprocess "
            "core/image_encoder.py, core/common_utils.py: torchvision ResNet50_Weights.DEFAULT "
            "= IMAGENET1K_V2, cut after layer3, average-pooled, 224-px patches, no resize); "
            "CLAM's extractor (github.com/mahmoodlab/CLAM: layer3 with timm's resnet50.tv_in1k "
            f"= IMAGENET1K_V1); {_TRIDENT} (float32, Resize bilinear)",
        ),
        _resnet(
            "resnet18",
            (256, 512),
            "layer4",
            imagenet=("IMAGENET1K_V1",),
            source="torchvision ResNet18_Weights.IMAGENET1K_V1 (its only ImageNet weights); "
            + _DSMIL,
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
            hub_repo="MahmoodLab/UNI",
            licence="CC-BY-NC-ND 4.0, gated (accept the terms on Hugging Face)",
            source="huggingface.co/MahmoodLab/UNI; github.com/mahmoodlab/UNI README and "
            f"uni/get_encoder; {_TRIDENT} (Resize 224 bilinear, CenterCrop 224, ImageNet mean/std)",
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
            hub_repo="MahmoodLab/UNI2-h",
            amp_dtype="bfloat16",
            licence="CC-BY-NC-ND 4.0, gated (accept the terms on Hugging Face)",
            source="huggingface.co/MahmoodLab/UNI2-h; github.com/mahmoodlab/UNI README; "
            f"{_TRIDENT} (timm kwargs, Resize 224 bilinear, CenterCrop 224, ImageNet, bfloat16)",
            unconfirmed="magnification (not stated in the model card)",
        ),
        _vit(
            "virchow",
            title="Virchow, ViT-H/14, SwiGLU",
            **_VIRCHOW_VIT_H,
            kwargs=_VIRCHOW_KWARGS,
            hub_repo="paige-ai/Virchow",
            licence="Apache-2.0, gated (request access on Hugging Face; the card adds terms)",
            source="huggingface.co/paige-ai/Virchow README (Apache-2.0, gated, timm); "
            f"{_TRIDENT} (timm kwargs, Resize 224 bicubic, ImageNet mean/std, class token + "
            "mean of the patch tokens = 2560-d)",
            unconfirmed="magnification (20x in the Virchow paper as others summarise it, not "
            "read here)",
        ),
        _vit(
            "virchow2",
            title="Virchow2, ViT-H/14 with 4 registers, SwiGLU",
            **_VIRCHOW_VIT_H,
            kwargs={**_VIRCHOW_KWARGS, "reg_tokens": 4},
            hub_repo="paige-ai/Virchow2",
            licence="CC-BY-NC-ND 4.0, gated (accept the terms on Hugging Face)",
            source="huggingface.co/paige-ai/Virchow2 (class token + mean of the patch tokens "
            "after the 4 registers = 2560-d; licence cc-by-nc-nd-4.0, access requests); arXiv "
            f"2408.00738 (mixed 5x-40x training); {_TRIDENT} (Resize 224 bicubic, ImageNet "
            "mean/std)",
        ),
        _vit(
            "h-optimus-0",
            title="H-optimus-0, ViT-g/14 with 4 registers, SwiGLU",
            **_HOPTIMUS_VIT_G,
            mpp=0.5,
            hub_repo="bioptimus/H-optimus-0",
            licence="Apache-2.0",
            source="huggingface.co/bioptimus/H-optimus-0 README ('expects images of size "
            "224x224 that were extracted at 0.5 microns per pixel'; its transform has no resize) "
            f"and config.json (architecture, class token, 1536-d, mean/std, licence); {_TRIDENT} "
            "(init_values=1e-5, Resize 224 bilinear)",
            unconfirmed="gating",
        ),
        _vit(
            "h-optimus-1",
            title="H-optimus-1, ViT-g/14 with 4 registers, SwiGLU",
            **_HOPTIMUS_VIT_G,
            hub_repo="bioptimus/H-optimus-1",
            licence="gated (request access on Hugging Face); licence terms: see the model card",
            source=f"huggingface.co/bioptimus/H-optimus-1; {_TRIDENT} (same architecture, "
            "kwargs, mean/std and Resize 224 bilinear as H-optimus-0)",
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
            mpp=0.5,
            hub_repo="bioptimus/H0-mini",
            licence="gated (request access on Hugging Face); licence terms: see the model card",
            source=f"huggingface.co/bioptimus/H0-mini; {_TRIDENT} (SwiGLUPacked + SiLU, "
            "class token or class token + mean of the patch tokens); docs.bioptimus.com SDK "
            "reference, models/types (its ModelSpec example for h0-mini: 224-px tiles at 0.5 "
            "um/px, mean/std as H-optimus-0's to 3 digits)",
            unconfirmed="the hub config.json (mlp_ratio here is timm's default 4; mean/std are "
            "H-optimus-0's; resize interpolation); a checkpoint that does not fit is refused",
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
            patch_px=256,
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
            hub_repo="owkin/phikon-v2",
            amp_dtype="float32",
            layout="dinov2-hf",
            licence="Hugging Face tag `other`: LICENSE.pdf in the repository",
            source="huggingface.co/owkin/phikon-v2 (transformers Dinov2Model; "
            "last_hidden_state[:, 0] = 1024-d) and arXiv 2409.09173; "
            f"{_TRIDENT} (Resize 224 bilinear, CenterCrop 224, ImageNet mean/std, float32); "
            "tensors renamed from transformers' layout to timm's by span/features/convert.py "
            "(tested against transformers' Dinov2Model)",
            unconfirmed="its config.json (ViT-L/16 with layer scale and no registers are "
            "assumed: a checkpoint that differs is refused; another position grid than 14 x 14 "
            "is resampled as transformers does), the licence terms, magnification, and whether "
            "it is gated",
        ),
        _vit(
            "gpfm",
            title="GPFM, ViT-L/14 (DINOv2 layout)",
            arch="vit_large_patch14_dinov2",
            kwargs={
                "img_size": 224,
                "init_values": 1e-5,
                "num_classes": 0,
                "dynamic_img_size": True,
            },
            outputs={"cls": Output(1024, "cls")},
            default_output="cls",
            interpolation="bicubic",
            hub_repo="majiabo/GPFM",
            hub_file="GPFM.pth",
            licence="see the model card (huggingface.co/majiabo/GPFM)",
            source=f"{_TRIDENT} (timm vit_large_patch14_dinov2 at img_size 224 with "
            "init_values=1e-5, GPFM.pth from majiabo/GPFM loaded strictly, class token, Resize "
            "224 bicubic without crop, ImageNet mean/std)",
            unconfirmed="licence, gating and magnification; whether GPFM.pth loads with "
            "weights_only=True (TRIDENT loads it with weights_only=False; a file holding more "
            "than tensors is refused with its line)",
        ),
        _kaiko("vits16", "vit_small_patch16_224", 384),
        _kaiko("vits8", "vit_small_patch8_224", 384),
        _kaiko("vitb16", "vit_base_patch16_224", 768),
        _kaiko("vitb8", "vit_base_patch8_224", 768),
        _vit(
            "lunit-vits8",
            title="Lunit DINO ViT-S/8",
            arch="vit_small_patch8_224",
            kwargs={"img_size": 224, "num_classes": 0, "dynamic_img_size": True},
            outputs={"cls": Output(384, "cls")},
            default_output="cls",
            mean=LUNIT_MEAN,
            std=LUNIT_STD,
            hub_repo="1aurent/vit_small_patch8_224.lunit_dino",
            amp_dtype="float32",
            licence="Lunit non-commercial (Hugging Face tag `other`: lunit-non-commercial)",
            source="huggingface.co/1aurent/vit_small_patch8_224.lunit_dino (timm "
            "architecture, licence; arXiv 2212.04690); Lunit's mean/std as used by "
            f"github.com/lunit-io/benchmark-ssl-pathology users; {_TRIDENT} (timm transform "
            "from the hub config, float32)",
            unconfirmed="the hub config.json's resize interpolation and crop (bilinear, no "
            "crop here), magnification (trained at 20x and 40x), whether it is gated",
        ),
        _vit(
            "conch-v15",
            title="CONCH v1.5 vision tower, ViT-L/16 at 448 px + attentional pooler",
            arch="vit_large_patch16_224",
            kwargs={
                "img_size": 224,
                "init_values": 1.0,
                "num_classes": 0,
                "dynamic_img_size": True,
            },
            head="conch",
            outputs={"attn_pool": Output(768, "attn_pool")},
            default_output="attn_pool",
            input_size=448,
            resize_to=448,
            patch_px=512,
            hub_repo="MahmoodLab/conchv1_5",
            hub_file="pytorch_model_vision.bin",
            licence="CC-BY-NC-ND 4.0, gated (accept the terms on Hugging Face)",
            source=f"{_TRIDENT} and its model_zoo/conchv1_5/conchv1_5.py (iBOT ViT-L/16 built "
            "at 224 px with init_values=1.0, run at 448 px with the 14 x 14 position grid "
            "resampled at run time: bicubic, scale factor (28 + 0.1) / 14; attentional pooler "
            "over all tokens: one query, 8 heads, 1024 -> 768, then LayerNorm(768); Resize 448 "
            "bilinear, CenterCrop 448, ImageNet mean/std, float16; pytorch_model_vision.bin "
            "loaded strictly); TRIDENT's README (512-px patches at 20x); written here on timm, "
            "not copied, and checked against TRIDENT's module with random weights",
            unconfirmed="the checkpoint's position grid (14 x 14, as TRIDENT's model is built: "
            "another is refused, not resampled), the conchv1_5 card's licence text (CONCH's is "
            "CC-BY-NC-ND 4.0, gated) and magnification (20x is TRIDENT's advice, not checked "
            "at start-up)",
        ),
        _vit(
            "midnight-12k",
            title="Midnight-12k, ViT-g/14 (DINOv2), SwiGLU",
            arch="vit_giant_patch14_dinov2",
            kwargs={"img_size": 224, "num_classes": 0},
            outputs={"cls_mean": Output(3072, "cls_mean"), "cls": Output(1536, "cls")},
            default_output="cls_mean",
            mean=KAIKO_MEAN,
            std=KAIKO_STD,
            hub_repo="kaiko-ai/midnight",
            layout="dinov2-hf",
            licence="MIT; open",
            source="huggingface.co/kaiko-ai/midnight and github.com/kaiko-ai/Midnight README "
            "(transformers AutoModel; base model facebook/dinov2-giant; 224 x 224 inputs, "
            "Resize 224, CenterCrop 224, mean/std 0.5; classification embedding = class token "
            "+ mean of the 16 x 16 patch tokens = 3072-d; MIT); arXiv 2504.05186; "
            f"{_TRIDENT} (float16); tensors renamed from transformers' layout by "
            "span/features/convert.py, the position grid resampled as transformers does",
            unconfirmed="its config.json (ViT-g/14 without registers and SwiGLU are its base "
            "model's, and no registers fits the card's 16 x 16 patch tokens; a checkpoint that "
            "differs is refused), magnification (trained at several)",
        ),
        _vit(
            "openmidnight",
            title="OpenMidnight, ViT-g/14 with 4 registers (DINOv2), SwiGLU",
            arch="vit_giant_patch14_reg4_dinov2",
            kwargs={"img_size": 224, "num_classes": 0},
            outputs={"cls": Output(1536, "cls")},
            default_output="cls",
            hub_repo="SophontAI/OpenMidnight",
            hub_file="teacher_checkpoint_load.pt",
            layout="dinov2-meta",
            licence="see the model card (huggingface.co/SophontAI/OpenMidnight); training code "
            "Apache-2.0",
            source=f"{_TRIDENT} (torch.hub dinov2_vitg14_reg with the checkpoint's pos_embed, "
            "teacher_checkpoint_load.pt loaded strictly, class token after the final norm, "
            "Resize (224, 224) bilinear without crop, ImageNet mean/std, float16); "
            "github.com/MedARC-AI/OpenMidnight (vitg14_reg4.yaml: SwiGLU, 4 registers; teacher "
            "trained on 224-px global crops, so a 16 x 16 position grid); tensors renamed by "
            "span/features/convert.py",
            unconfirmed="the weights' licence and gating, magnification; whether "
            "teacher_checkpoint_load.pt loads with weights_only=True (TRIDENT loads it with "
            "weights_only=False; a file holding more than tensors is refused with its line); "
            "a grid other than 16 x 16 is resampled as DINOv2's register models do at run time",
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
        kinds += ["imagenet", *(f"imagenet:{member}" for member in info.imagenet)]
    if info.hub_repo:
        kinds += ["hf-hub", f"hf-hub:{info.hub_repo}"]
    return kinds


def markdown_table() -> str:
    """The encoder table of docs/encoders.md, generated from the registry."""
    rows = [
        "| encoder | architecture | outputs (`layer`: dim, pooling) | field: tile at um/px "
        "| input: resize, crop | CUDA precision | mean / std | weights | licence / access "
        "| not confirmed here |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in ENCODERS.values():
        outputs = ", ".join(
            f"`{k}`{'*' if k == e.default_output else ''}: {o.dim} ({o.pooling})"
            for k, o in e.outputs.items()
        )
        field_ = f"{e.patch_px} px at {e.mpp}" if e.mpp else f"{e.patch_px} px, um/px not published"
        crop = f", crop {e.input_size}" if e.resize_to != e.input_size else ""
        stats = "ImageNet" if e.mean == IMAGENET_MEAN else f"{e.mean} / {e.std}"
        weights = ", ".join(f"`{w}`" for w in weights_kinds(e) if w not in ("random", "hf-hub"))
        rows.append(
            f"| `{e.name}` | {e.title} | {outputs} | {field_} | {e.resize_to} {e.interpolation}"
            f"{crop} | {e.amp_dtype} | {stats} | {weights} | {e.licence} "
            f"| {e.unconfirmed or '-'} |"
        )
    return "\n".join(rows)
