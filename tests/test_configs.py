"""Every shipped config loads and builds; the real R101-D8 runs a small forward."""
import glob
import os

import pytest
import torch
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmseg.registry import MODELS

from mmseg_aspp import ASPPHead
from mmseg_aspp.models import CascadedResNetV1c

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*", "*.py")))
CONFIGS = [c for c in CONFIGS if os.sep + "_base_" + os.sep not in c]


def _load(path):
    cfg = Config.fromfile(path)
    cfg.model.pretrained = None  # no downloads in tests
    return cfg


FAMILIES = {"deeplabv3": "ASPPHead", "deeplabv3plus": "DepthwiseSeparableASPPHead"}
# The cascaded model (DeepLabV3 Sec. 3.2): alone (a 1x1 classifier) or under our ASPP head; mmseg
# has no such backbone, so these recipes have no upstream twin.
CASCADE_HEADS = {"cascade": "FCNHead", "deeplabv3-cascade": "ASPPHead"}


def _family(path):
    """(family, is the upstream twin) from a config's path."""
    folder, name = path.split(os.sep)[-2:]
    twin = folder.endswith("_upstream")
    return (folder.removesuffix("_upstream") if folder not in ("demo", "deeplabv3_cascade") else name.split("_")[0]), twin


def test_every_recipe_has_an_upstream_twin():
    for family in FAMILIES:
        ours = {os.path.basename(c) for c in CONFIGS if _family(c) == (family, False)}
        twins = {os.path.basename(c) for c in CONFIGS if _family(c) == (family, True)}
        assert ours == twins, family
        assert len(ours) >= 13, family


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, os.path.join(ROOT, "configs")))
def test_config_builds(path):
    cfg = _load(path)
    assert cfg.custom_imports["imports"] == ["mmseg_aspp"]
    model = MODELS.build(cfg.model)
    family, is_twin = _family(path)
    if family in CASCADE_HEADS:
        assert isinstance(model.backbone, CascadedResNetV1c) and len(model.backbone.res_layers) == 7
        assert type(model.decode_head).__name__ == CASCADE_HEADS[family]
        return
    assert isinstance(model.decode_head, ASPPHead) != is_twin
    assert type(model.decode_head).__name__ == FAMILIES[family]


@pytest.mark.parametrize("family, name", [("deeplabv3", "deeplabv3_r101-d8_4xb2-80k_cityscapes-512x1024.py"),
                                          ("deeplabv3plus", "deeplabv3plus_r101-d8_4xb2-80k_cityscapes-512x1024.py")])
def test_twin_differs_only_in_head_type_and_conv_layer(family, name):
    ours = _load(os.path.join(ROOT, "configs", family, name)).to_dict()
    twin = _load(os.path.join(ROOT, "configs", f"{family}_upstream", name)).to_dict()
    assert ours["model"]["decode_head"].pop("type") == f"mmseg_aspp.{FAMILIES[family]}"
    assert twin["model"]["decode_head"].pop("type") == FAMILIES[family]
    assert ours["model"]["backbone"].pop("conv_cfg") == dict(type="mmseg_aspp.Conv2d")
    assert twin["model"]["backbone"].pop("conv_cfg") is None
    assert ours == twin


def test_r101_d8_forward_on_a_small_input():
    cfg = _load(os.path.join(ROOT, "configs", "deeplabv3", "deeplabv3_r101-d8_4xb2-80k_cityscapes-512x1024.py"))
    model = revert_sync_batchnorm(MODELS.build(cfg.model)).eval()
    assert cfg.model.backbone.depth == 101 and cfg.model.decode_head.dilations == (1, 12, 24, 36)
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 64, 96), mode="tensor")
    assert logits.shape == (1, 19, 8, 12)  # output stride 8
    assert torch.isfinite(logits).all()
