"""Foundation-model encoders: every registered architecture (built without downloads), the
published facts, preprocessing, checkpoints (used, refused), hub weights from the cache, and
one `span extract` end to end with a tiny ViT entry."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import timm
import torch
import yaml

from span.cli import main as span_main
from span.errors import SpanError
from span.features import registry
from span.features.encoders import build_architecture, build_encoder, cut, preflight
from span.features.extract import encode_tiles
from span.features.registry import ENCODERS, HOPTIMUS_MEAN, HOPTIMUS_STD, EncoderInfo, Output
from span.features.tiles import SlideTiles
from span.slides.patch_file import PatchSet, read_patch_file, write_patch_file
from span.slides.patching import PatchingParams, run_patching
from span.slides.tiff_writer import write_pyramidal_tiff
from span.synthetic.tissue import render_tissue

REPO = Path(__file__).resolve().parents[1]
ENCODERS_DOC = REPO / "docs" / "encoders.md"

#: A two-block ViT-Ti with 4 registers, a 256 -> 224 crop and class + mean pooling: every code
#: path of the large entries at a thousandth of their cost.
TINY = EncoderInfo(
    name="tiny-vit",
    title="test ViT-Ti/16, 2 blocks, 4 registers",
    family="timm",
    arch="vit_tiny_patch16_224",
    kwargs={
        "img_size": 224,
        "depth": 2,
        "reg_tokens": 4,
        "no_embed_class": True,
        "init_values": 1e-5,
    },
    outputs={"cls_mean": Output(384, "cls_mean"), "cls": Output(192, "cls")},
    default_output="cls_mean",
    resize_to=256,
    interpolation="bicubic",
    mean=HOPTIMUS_MEAN,
    std=HOPTIMUS_STD,
    patch_px=256,
    mpp=0.5,
    hub_repo="span-tests/tiny-vit",
)

#: The ViT-g entries (1.1B parameters): build + forward 20-21 s on 2 CPU cores, 45 s on busy
#: ones (uni2-h, virchow and virchow2: 10-25 s, uni and gpfm 7-17 s); CONCH v1.5's ViT-L at
#: 448 px (four times UNI's tokens).
SLOW = {"h-optimus-0", "h-optimus-1", "prov-gigapath", "midnight-12k", "openmidnight", "conch-v15"}


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setitem(ENCODERS, TINY.name, TINY)
    return TINY


@pytest.mark.parametrize("name", list(ENCODERS))
def test_every_output_has_its_width_without_computing(name):
    """Every architecture and output, on the meta device (no memory, no download)."""
    info = ENCODERS[name]
    with torch.device("meta"):
        model = build_architecture(info)
        x = torch.empty(2, 3, info.input_size, info.input_size)
        for layer, out in info.outputs.items():
            assert cut(info, layer, model)(x).shape == (2, out.dim), layer
    assert info.default_output in info.outputs


def test_published_facts():
    """Facts from the model cards and their code, independent of how the registry words them;
    parameter counts as published (UNI 0.3B, UNI2-h 681M, Virchow2 632M, ViT-g 1.1B)."""
    uni, v2, h0 = ENCODERS["uni"], ENCODERS["virchow2"], ENCODERS["h-optimus-0"]
    assert uni.arch == "vit_large_patch16_224"
    assert uni.kwargs["init_values"] == 1e-5 and uni.kwargs["dynamic_img_size"]
    assert (v2.kwargs["mlp_ratio"], v2.kwargs["reg_tokens"], v2.swiglu) == (5.3375, 4, True)
    assert v2.outputs["cls_mean"].dim == 2560
    assert h0.arch == "vit_giant_patch14_reg4_dinov2"
    assert h0.mean == (0.707223, 0.578729, 0.703617)
    assert h0.std == (0.211883, 0.230117, 0.177517)
    giga = ENCODERS["prov-gigapath"]
    assert (giga.patch_px, giga.mpp, giga.resize_to, giga.interpolation) == (
        256,
        0.5,
        256,
        "bicubic",
    )
    assert (h0.patch_px, h0.mpp, h0.resize_to) == (224, 0.5, 224)
    v1 = ENCODERS["virchow"]
    assert (v1.outputs["cls_mean"].dim, v1.interpolation, v1.kwargs["mlp_ratio"]) == (
        2560,
        "bicubic",
        5.3375,
    )
    assert "reg_tokens" not in v1.kwargs and v1.swiglu
    assert ENCODERS["kaiko-vitb8"].mean == ENCODERS["kaiko-vits16"].std == (0.5, 0.5, 0.5)
    assert ENCODERS["lunit-vits8"].mean == (0.70322989, 0.53606487, 0.66096631)
    assert ENCODERS["gpfm"].hub_file == "GPFM.pth"
    conch, midnight, om = ENCODERS["conch-v15"], ENCODERS["midnight-12k"], ENCODERS["openmidnight"]
    assert (conch.input_size, conch.resize_to, conch.outputs["attn_pool"].dim) == (448, 448, 768)
    assert (conch.hub_file, conch.amp_dtype, conch.head) == (
        "pytorch_model_vision.bin",
        "float16",
        "conch",
    )
    assert (midnight.outputs["cls_mean"].dim, midnight.mean, midnight.layout) == (
        3072,
        (0.5, 0.5, 0.5),
        "dinov2-hf",
    )
    assert (om.hub_file, om.layout, om.mean) == (
        "teacher_checkpoint_load.pt",
        "dinov2-meta",
        (0.485, 0.456, 0.406),
    )
    for name in ("resnet50", "resnet18", "phikon-v2", "kaiko-vits8", "lunit-vits8"):
        assert ENCODERS[name].amp_dtype == "float32", name  # as TRIDENT runs them
    expected = {
        "uni": 303e6,
        "uni2-h": 681e6,
        "virchow": 632e6,
        "virchow2": 632e6,
        "h-optimus-0": 1.13e9,
        "prov-gigapath": 1.13e9,
        "gpfm": 303e6,
        "midnight-12k": 1.13e9,
        "openmidnight": 1.13e9,
        "conch-v15": 306e6,  # a ViT-L trunk (UNI's 303M) + the pooler (2 x 768^2 + 1024 x 1536)
        "kaiko-vits16": 21.7e6,
        "kaiko-vitb8": 85.8e6,
        "lunit-vits8": 21.7e6,
    }
    for name, published in expected.items():
        with torch.device("meta"):
            n = sum(p.numel() for p in build_architecture(ENCODERS[name]).parameters())
        assert abs(n / published - 1) < 0.01, (name, n)
    with torch.device("meta"):
        v2_model = build_architecture(v2)
    assert v2_model.num_prefix_tokens == 5  # class token + 4 registers, skipped by the mean
    for info in ENCODERS.values():
        assert info.source and info.licence, info.name


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in ENCODERS],
)
def test_random_weights_build_and_encode(name):
    """The real thing with seeded random weights: width, finite, and what the file records
    (every architecture's forward; the meta-device test covers every output's width)."""
    t0 = time.perf_counter()
    encoder = build_encoder(name, None, "random")
    info = ENCODERS[name]
    tiles = torch.randint(0, 256, (1, info.input_size, info.input_size, 3), dtype=torch.uint8)
    with torch.inference_mode():
        features = encode_tiles(encoder, tiles, torch.device("cpu"), amp=True)
    assert features.shape == (1, info.outputs[info.default_output].dim)
    assert torch.isfinite(features).all()
    assert (encoder.layer, encoder.weights) == (info.default_output, "random")
    library = "torchvision" if info.family == "torchvision" else "timm"
    assert encoder.version.startswith(library + " ")
    print(f"{name}: build + forward {time.perf_counter() - t0:.1f} s")


def test_transform_equals_the_recorded_size_and_statistics(tiny, tmp_path):
    """Tiles are resized to resize_to and centre-cropped to input_size, then normalised with
    the entry's mean/std (checked against an independent computation)."""
    encoder = build_encoder("tiny-vit", None, "random")
    assert (encoder.mean, encoder.std) == (TINY.mean, TINY.std)
    assert (encoder.resize_to, encoder.input_size, encoder.interpolation) == (256, 224, "bicubic")
    for info in ENCODERS.values():
        assert info.resize_to >= info.input_size > 0 and len(info.mean) == len(info.std) == 3

    from PIL import Image
    from torchvision import transforms

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (600, 600, 3), dtype=np.uint8)
    slide = write_pyramidal_tiff(tmp_path / "s.tiff", image, 0.5, downsamples=(1,))
    tiles = SlideTiles(
        slide, np.array([[0, 0], [224, 224]]), 0, 224, 256, crop_size=224, interpolation="bicubic"
    )
    tile, _, ok = tiles[1]
    region = tiles._handle().read_region((224, 224), 0, (224, 224)).convert("RGB")
    published = transforms.Compose(  # Prov-GigaPath's card, on a PIL image
        [transforms.Resize(256, interpolation=Image.Resampling.BICUBIC), transforms.CenterCrop(224)]
    )
    expected = np.asarray(published(region))
    assert ok and tile.shape == (224, 224, 3)
    np.testing.assert_array_equal(tile.numpy(), expected)

    seen = {}

    def spy(x):
        seen["x"] = x.clone()
        return x.mean(dim=(2, 3))

    encoder.model = spy
    encode_tiles(encoder, tile[None], torch.device("cpu"), amp=True)
    by_hand = (tile.permute(2, 0, 1).float() / 255 - torch.tensor(TINY.mean)[:, None, None]) / (
        torch.tensor(TINY.std)[:, None, None]
    )
    torch.testing.assert_close(seen["x"][0], by_hand, rtol=1e-5, atol=1e-5)


def _reference(state: dict, x: torch.Tensor) -> torch.Tensor:
    """Class token + mean of the patch tokens with timm's own pooling (not span's)."""
    kwargs = {**TINY.kwargs, "num_classes": 0}
    cls = timm.create_model(TINY.arch, global_pool="token", **kwargs)
    avg = timm.create_model(TINY.arch, global_pool="avg", fc_norm=False, **kwargs)
    for m in (cls, avg):
        m.load_state_dict(state)
        m.eval()
    with torch.inference_mode():
        return torch.cat([cls(x), avg(x)], dim=1)


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_local_checkpoint_weights_are_really_used(tiny, tmp_path, fmt):
    torch.manual_seed(7)
    state = timm.create_model(TINY.arch, num_classes=0, **TINY.kwargs).state_dict()
    path = tmp_path / f"tiny.{fmt}"
    if fmt == "pt":
        torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, path)
    else:
        from safetensors.torch import save_file

        save_file(state, path)
    encoder = build_encoder("tiny-vit", None, str(path))
    assert encoder.weights.startswith("sha256:") and len(encoder.weights) == 7 + 64
    x = torch.randn(3, 3, 224, 224)
    with torch.inference_mode():
        got = encoder.model(x)
        random = build_encoder("tiny-vit", None, "random").model(x)
    torch.testing.assert_close(got, _reference(state, x), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, random, atol=1e-2)


def test_imagenet_weights_are_the_named_ones(monkeypatch):
    """`imagenet` is ResNet-50's IMAGENET1K_V2 (torchvision's DEFAULT, the SPAN authors'),
    `imagenet:IMAGENET1K_V1` CLAM's; the features record which; no download is made."""
    from torchvision import models

    requested = []
    built = {"resnet50": models.resnet50, "resnet18": models.resnet18}
    monkeypatch.setattr(
        models,
        "get_model",
        lambda arch, weights: requested.append((arch, weights)) or built[arch](),
    )
    cases = {
        ("resnet50", "imagenet"): models.ResNet50_Weights.IMAGENET1K_V2,
        ("resnet50", "imagenet:IMAGENET1K_V1"): models.ResNet50_Weights.IMAGENET1K_V1,
        ("resnet18", "imagenet"): models.ResNet18_Weights.IMAGENET1K_V1,
    }
    for (name, weights), member in cases.items():
        encoder = build_encoder(name, None, weights)
        assert requested.pop() == (name, member)
        assert encoder.weights == f"imagenet:{member.name}"
    assert models.ResNet50_Weights.DEFAULT == models.ResNet50_Weights.IMAGENET1K_V2
    with pytest.raises(SpanError, match="resnet18 has no imagenet:IMAGENET1K_V2 weights"):
        build_encoder("resnet18", None, "imagenet:IMAGENET1K_V2")


def test_dsmil_instance_norm_checkpoint_is_refused_by_resnet18(tmp_path):
    """DSMIL's SimCLR ResNet-18 has InstanceNorm layers (no norm weights): refused with one
    line, never loaded partly."""
    from torchvision import models

    state = models.resnet18(norm_layer=torch.nn.InstanceNorm2d).state_dict()
    torch.save(state, tmp_path / "dsmil.pth")
    for check in (build_encoder, preflight):
        with pytest.raises(SpanError, match="resnet18") as err:
            check("resnet18", None, str(tmp_path / "dsmil.pth"))
        assert "\n" not in str(err.value)


def test_wrong_checkpoint_is_refused_with_its_line(tiny, tmp_path):
    """Another architecture's checkpoint: refused by the extraction and by the start-up check,
    naming the encoder and where its weights come from."""
    no_registers = {**TINY.kwargs, "reg_tokens": 0}
    state = timm.create_model(TINY.arch, num_classes=0, **no_registers).state_dict()
    torch.save(state, tmp_path / "other.pt")
    from safetensors.torch import save_file

    save_file(state, tmp_path / "other.safetensors")
    wider = timm.create_model(
        "vit_small_patch16_224",
        num_classes=0,
        depth=2,
        reg_tokens=4,
        no_embed_class=True,
        init_values=1e-5,
    ).state_dict()
    torch.save(wider, tmp_path / "wider.pt")
    with_head = {
        **timm.create_model(TINY.arch, num_classes=0, **TINY.kwargs).state_dict(),
        "head.weight": torch.zeros(2, 192),
    }
    torch.save(with_head, tmp_path / "head.pt")
    cases = {
        "other.pt": "lacks 1 tensors, e.g. ['reg_token']",
        "other.safetensors": "lacks 1 tensors, e.g. ['reg_token']",
        "wider.pt": "another shape",
        "head.pt": "tensors this architecture lacks, e.g. ['head.weight']",
    }
    for file, reason in cases.items():
        for check in (build_encoder, preflight):
            with pytest.raises(SpanError, match="not a tiny-vit checkpoint") as err:
                check("tiny-vit", None, str(tmp_path / file))
            line = str(err.value)
            assert reason in line and "\n" not in line
            assert "features.weights: hf-hub" in line and "HF_TOKEN" in line
    with pytest.raises(SpanError, match="checkpoint not found"):
        preflight("tiny-vit", None, str(tmp_path / "missing.pt"))
    with pytest.raises(SpanError, match="uni has no imagenet weights"):
        build_encoder("uni", None, "imagenet")
    with pytest.raises(SpanError, match=r"no output 'penultimate'.*Fix: choose one of cls"):
        build_encoder("uni", "penultimate", "random")


def _fake_hub_cache(root: Path, repo: str, commit: str, filename: str, state: dict) -> None:
    """A Hugging Face cache holding one file of `repo` at `commit`, as huggingface_hub lays
    it out."""
    from safetensors.torch import save_file

    folder = root / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file(state, snapshot / filename)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)


def test_hub_weights_from_the_cache_offline_and_clear_line_when_missing(
    tiny, tmp_path, monkeypatch
):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    torch.manual_seed(3)
    state = timm.create_model(TINY.arch, num_classes=0, **TINY.kwargs).state_dict()
    commit = "0123456789abcdef0123456789abcdef01234567"
    _fake_hub_cache(tmp_path, TINY.hub_repo, commit, "model.safetensors", state)
    encoder = build_encoder("tiny-vit", None, "hf-hub")
    assert encoder.weights == f"hf-hub:{TINY.hub_repo}@{commit}/model.safetensors"
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(encoder.model(x), _reference(state, x), rtol=1e-4, atol=1e-4)
    preflight("tiny-vit", None, "hf-hub")  # cached and fitting: passes offline

    with pytest.raises(SpanError) as err:
        build_encoder("uni", None, "hf-hub")
    line = str(err.value)
    assert line.startswith("uni: weights from huggingface.co/MahmoodLab/UNI are not in the")
    assert "offline" in line and "HF_TOKEN" in line and "\n" not in line


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory):
    """A tumour slide at 20x and a patch file of its first 6 patches."""
    root = tmp_path_factory.mktemp("vit")
    image, *_ = render_tissue(900, 900, 0.5, tumour=True, seed=3, dust=False)
    slide = write_pyramidal_tiff(root / "slide.tiff", image, 0.5, downsamples=(1, 4))
    full = run_patching(slide, "small", root / "all.h5", root / "qc.png", PatchingParams())
    sub = PatchSet(full.coords[:6], full.grid[:6], full.tissue_fraction[:6], full.attrs)
    write_patch_file(root / "patches.h5", sub)
    return slide, root / "patches.h5"


def test_span_extract_end_to_end_with_a_vit_entry(tiny, small_slide, tmp_path):
    slide, patches = small_slide
    torch.manual_seed(5)
    state = timm.create_model(TINY.arch, num_classes=0, **TINY.kwargs).state_dict()
    torch.save(state, tmp_path / "tiny.pt")
    out = tmp_path / "features" / "tiny-vit-cls_mean" / "slide.h5"
    argv = [
        "extract",
        "--slide",
        str(slide),
        "--patches",
        str(patches),
        "--out",
        str(out),
        "--encoder",
        "tiny-vit",
        "--weights",
        str(tmp_path / "tiny.pt"),
        "--num-workers",
        "0",
        "--batch-size",
        "4",
    ]
    assert span_main(argv) == 0
    with h5py.File(out) as f:
        features, attrs = f["features"][:], dict(f.attrs)
    assert features.shape == (6, 384) and np.isfinite(features).all()
    assert (attrs["encoder"], attrs["layer"], attrs["feature_dim"]) == ("tiny-vit", "cls_mean", 384)
    assert attrs["weights"].startswith("sha256:")
    assert attrs["encoder_version"] == f"timm {timm.__version__}"

    p = read_patch_file(patches)
    level, size = p.attrs["patch_level"], p.attrs["patch_size"]
    tiles = SlideTiles(slide, p.coords, level, size, 256, crop_size=224, interpolation="bicubic")
    x = torch.stack([tiles[i][0] for i in range(6)])
    x = (x.permute(0, 3, 1, 2).float() / 255 - torch.tensor(TINY.mean)[:, None, None]) / (
        torch.tensor(TINY.std)[:, None, None]
    )
    np.testing.assert_allclose(features, _reference(state, x).numpy(), rtol=1e-3, atol=1e-3)


def test_encoder_page_table_is_the_registry():
    assert registry.markdown_table() in ENCODERS_DOC.read_text()


def test_phikon_v2_layout_is_converted_exactly():
    """A transformers Dinov2Model (Phikon-v2's published layout) and the timm ViT built from
    its renamed state dict give the same class token (skipped where transformers is absent)."""
    transformers = pytest.importorskip("transformers")
    from span.features.convert import dinov2_hf_to_timm
    from span.features.encoders import ViTEmbedding

    config = transformers.Dinov2Config(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        patch_size=16,
        image_size=224,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
    )
    torch.manual_seed(11)
    hf = transformers.Dinov2Model(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.2)
    kwargs = {**ENCODERS["phikon-v2"].kwargs, "embed_dim": 64, "depth": 2, "num_heads": 4}
    vit = timm.create_model(ENCODERS["phikon-v2"].arch, global_pool="", **kwargs)
    # transformers 5 names, and the transformers 4 names of the published checkpoint
    v5 = hf.state_dict()
    old = {
        "q_proj": "attention.query",
        "k_proj": "attention.key",
        "v_proj": "attention.value",
        "o_proj": "output.dense",
    }
    v4 = {
        re.sub(
            r"attention\.(q_proj|k_proj|v_proj|o_proj)", lambda m: f"attention.{old[m[1]]}", k
        ): v
        for k, v in v5.items()
    }
    assert "encoder.layer.0.attention.attention.query.weight" in v4
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        expected = hf(pixel_values=x).last_hidden_state[:, 0]
        for state in (v5, v4):
            vit.load_state_dict(dinov2_hf_to_timm(state, (14, 14)))
            torch.testing.assert_close(ViTEmbedding(vit.eval(), "cls")(x), expected)


def _dry_run(tmp_path: Path, features: dict) -> subprocess.CompletedProcess:
    """`snakemake -n` on a one-slide sheet with this features section."""
    slide = write_pyramidal_tiff(
        tmp_path / "s.tiff", np.full((64, 64, 3), 200, np.uint8), 0.5, downsamples=(1,)
    )
    (tmp_path / "sheet.tsv").write_text(f"slide_id\tpath\tlabel\ns1\t{slide}\ttumor\n")
    config = {
        "cohort": "enc",
        "samples": str(tmp_path / "sheet.tsv"),
        "classes": ["normal", "tumor"],
        "demo": {"generate": False},
        "features": features,
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(tmp_path),
        "--configfile",
        str(tmp_path / "config.yaml"),
        "-n",
        "-p",
    ]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=600
    )


def test_workflow_checks_the_encoder_before_any_job(tmp_path):
    """A null layer becomes the published output (and names the features folder); an unknown
    output, a missing or non-fitting checkpoint, patches that are not the encoder's published
    field stop the run at start-up with one line."""
    ok = _dry_run(tmp_path / "a", {"encoder": "virchow2", "weights": "random"})
    assert ok.returncode == 0, ok.stdout[-2000:]
    assert "features/virchow2-cls_mean/s1.h5" in ok.stdout

    bad_layer = _dry_run(tmp_path / "b", {"encoder": "uni", "layer": "penultimate"})
    assert bad_layer.returncode != 0
    assert (
        "features.layer: uni has no output 'penultimate'. Fix: choose one of cls"
        in bad_layer.stdout
    )

    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "resnet.pt")
    wrong = _dry_run(tmp_path / "c", {"encoder": "uni", "weights": str(tmp_path / "resnet.pt")})
    assert wrong.returncode != 0
    line = next(x for x in wrong.stdout.splitlines() if "invalid config, features.weights" in x)
    assert "not a uni checkpoint: checkpoint lacks" in line and "MahmoodLab/UNI" in line

    field = _dry_run(tmp_path / "d", {"encoder": "prov-gigapath", "weights": "random"})
    assert field.returncode != 0
    line = next(x for x in field.stdout.splitlines() if "invalid config, patching" in x)
    assert "prov-gigapath was trained on 256-px tiles at 0.5 um/px" in line
    assert "Fix: set patching.patch_size: 256 and patching.target_mpp: 0.5" in line
