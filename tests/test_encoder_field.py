"""Every encoder sees the field and resampling it was trained on: tiles resized with the
published filter exactly as the model cards' torchvision transforms do, the start-up check
refusing patches that are not an encoder's published field, and the ResNets' outputs by the
stage they cut at (the paper's features are layer3)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms

from span.cli import main as span_main
from span.errors import SpanError
from span.features.encoders import build_encoder
from span.features.registry import ENCODERS, field_problem
from span.features.tiles import centre_crop, resize_tile
from span.preflight import check_field

FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize(
    ("read", "out", "crop"), [(448, 224, 224), (224, 256, 224), (300, 224, 201)]
)
def test_tiles_are_resampled_as_the_published_transforms(interpolation, read, out, crop):
    """Shrinking (antialiased), enlarging and an odd crop: equal to torchvision's Resize and
    CenterCrop on a PIL image, value for value."""
    rgb = np.random.default_rng(read).integers(0, 256, (read, read, 3), dtype=np.uint8)
    published = transforms.Compose(
        [transforms.Resize(out, interpolation=FILTERS[interpolation]), transforms.CenterCrop(crop)]
    )
    ours = centre_crop(resize_tile(rgb, out, interpolation), crop)
    np.testing.assert_array_equal(ours, np.asarray(published(Image.fromarray(rgb))))


def test_every_encoder_states_its_field_and_filter():
    for info in ENCODERS.values():
        assert info.interpolation in FILTERS and info.patch_px > 0, info.name
        assert info.resize_to >= info.input_size
        if info.mpp is None:  # nothing published: nothing to check
            assert field_problem(info, 512, 0.25) is None
        else:  # its own tiles pass, others do not
            assert field_problem(info, info.patch_px, info.mpp) is None
            assert field_problem(info, info.patch_px, info.mpp * 2) is not None
            assert field_problem(info, info.patch_px + 32, info.mpp) is not None
    published = {n for n, e in ENCODERS.items() if e.mpp}
    assert published == {"prov-gigapath", "h-optimus-0", "h0-mini"}


def test_start_up_check_names_the_keys_to_set():
    """Prov-GigaPath on the default 224-px patches would see 98 um at 0.44 um/px instead of its
    112 um at 0.5 um/px: one line, naming both patching keys."""
    with pytest.raises(SpanError) as err:
        check_field("prov-gigapath", 224, 0.5)
    line = str(err.value)
    assert "it sees 112 um at 0.5 um/px" in line and "98 um at 0.438 um/px" in line
    assert line.endswith("Fix: set patching.patch_size: 256 and patching.target_mpp: 0.5")
    assert "\n" not in line
    with pytest.raises(SpanError, match=r"h-optimus-0 was trained on 224-px tiles at 0\.5"):
        check_field("h-optimus-0", 224, 0.25)
    check_field("prov-gigapath", 256, 0.5)
    check_field("h-optimus-0", 224, 0.49)  # within 5%: the slide's own resolution
    check_field("resnet50", 512, 0.25)
    argv = ["check", "--encoder", "h0-mini", "--layer", "cls", "--weights", "random"]
    assert span_main([*argv, "--patching", "224", "0.5"]) == 0
    assert span_main([*argv, "--patching", "256", "0.5"]) != 0


def test_resnet_outputs_are_named_by_stage():
    """resnet50's published output is layer3 (1024-d, the SPAN authors' features); the old
    name `penultimate` is refused with why, never mapped silently."""
    encoder = build_encoder("resnet50", None, "random")
    assert (encoder.layer, encoder.feature_dim) == ("layer3", 1024)
    assert build_encoder("resnet18", None, "random").layer == "layer4"
    with pytest.raises(SpanError) as err:
        build_encoder("resnet50", "penultimate", "random")
    line = str(err.value)
    assert "ambiguous" in line and "paper's 'penultimate layer' is layer3" in line
    assert "Fix: choose one of layer3, layer4 (or null: layer3)" in line
