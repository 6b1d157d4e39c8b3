"""mmseg_aspp.CascadedResNetV1c: DeepLabV3's blocks cascaded after block4 (Section 3.2)."""
import copy
import os

import pytest
import torch
from mmengine.config import Config
from mmseg.registry import MODELS
from torch import nn

from helpers import assert_float64_equal, randomize_
from mmseg_aspp.atrous.algorithms import ALGORITHMS
from mmseg_aspp.atrous.planner import forced_algorithm
from mmseg_aspp.models import CascadedResNetV1c, PlannedConv2d
from mmseg_aspp.models.aspp_head import ASPPArgumentError
from tooling import ROOT, TOOLS, run_tool, small_config

F64 = torch.float64
DEMO = os.path.join(ROOT, "configs", "demo", "deeplabv3-cascade_r18-d16-block7-mg121_1xb4-300it_synthetic-cityscapes-96x192.py")
SMALL = dict(depth=50, stem_channels=8, base_channels=4, norm_cfg=dict(type="BN", requires_grad=True),
             contract_dilation=True)
OS16 = dict(dilations=(1, 1, 1, 2), strides=(1, 2, 2, 1), multi_grid=(2, 4, 2))  # the paper's (1, 2, 1) at rate 2
OS8 = dict(dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1))


def _cascade(conv_cfg=None, **kw):
    return MODELS.build(dict(type="mmseg_aspp.CascadedResNetV1c", conv_cfg=conv_cfg, **{**SMALL, **OS16, **kw}))


@pytest.mark.parametrize("layout, expected", [
    # Output stride 16: block4 at rate 2, each extra block doubling it, multi-grid (1, 2, 1) inside.
    (dict(OS16, extra_blocks=3, extra_multi_grid=(1, 2, 1)),
     [[1] * 3, [1] * 4, [1] * 6, [2, 4, 2], [4, 8, 4], [8, 16, 8], [16, 32, 16]]),
    (dict(OS16, extra_blocks=1, extra_multi_grid=(1, 2, 4)), [[1] * 3, [1] * 4, [1] * 6, [2, 4, 2], [4, 8, 16]]),
    # Output stride 8 without multi-grid: block3 rate 2 (first unit contracted), block4 4, then 8, 16.
    (dict(OS8, extra_blocks=2, extra_multi_grid=None), [[1] * 3, [1] * 4, [1] + [2] * 5, [2, 4, 4], [4, 8, 8], [8, 16, 16]]),
])
def test_every_unit_runs_at_its_rate(layout, expected):
    backbone = MODELS.build(dict(type="mmseg_aspp.CascadedResNetV1c", **{**SMALL, **layout}))
    assert [rates for _, rates in backbone.unit_rates()] == expected
    names = [name for name, _ in backbone.unit_rates()]
    assert names == [f"layer{i}" for i in range(1, len(expected) + 1)]


@pytest.mark.parametrize("layout, stride", [(OS16, 16), (OS8, 8)])
def test_output_shapes_and_stride(layout, stride):
    backbone = _cascade(**layout, extra_blocks=3)
    backbone.eval()
    with torch.no_grad():
        outs = backbone(torch.randn(1, 3, 64, 96))
    assert len(outs) == 4  # layers 1-3 and block7, so heads read it as in_index=3
    assert outs[-1].shape == (1, 128, 64 // stride, 96 // stride)
    assert [o.shape[1] for o in outs[:3]] == [16, 32, 64]


def test_layers_1_to_4_load_strictly_from_mmsegs_resnet():
    resnet = MODELS.build(dict(type="ResNetV1c", **SMALL, **OS16))
    randomize_(resnet, seed=1)
    cascade = _cascade(extra_blocks=3)
    missing, unexpected = cascade.load_state_dict(resnet.state_dict(), strict=False)
    assert not unexpected
    assert missing and all(key.split(".")[0] in ("layer5", "layer6", "layer7") for key in missing)
    for key, value in resnet.state_dict().items():
        torch.testing.assert_close(cascade.state_dict()[key], value, rtol=0, atol=0)
    cascade.copy_block4_into_extra_blocks()
    for name in ("layer5", "layer6", "layer7"):
        for unit, source in zip(getattr(cascade, name), (1, 1, 2)):
            torch.testing.assert_close(unit.conv2.weight, cascade.layer4[source].conv2.weight, rtol=0, atol=0)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("forced", [None, *ALGORITHMS], ids=lambda m: m or "planned")
def test_extra_blocks_equal_plain_dilated_convolutions_in_float64(forced, train):
    """Built of mmseg_aspp.Conv2d, the cascade equals the same one of nn.Conv2d (F.conv2d at the
    same dilations), every algorithm forced: outputs, and in training every gradient."""
    upstream = _cascade(None, extra_blocks=3)
    randomize_(upstream, seed=2)
    ours = _cascade(dict(type="mmseg_aspp.Conv2d"), extra_blocks=3)
    ours.load_state_dict(upstream.state_dict(), strict=True)
    assert all(isinstance(m, PlannedConv2d) for m in ours.layer7.modules() if isinstance(m, nn.Conv2d))
    x = torch.randn(2, 3, 96, 80, generator=torch.Generator().manual_seed(0), dtype=F64)
    results = []
    for model in (ours, upstream):
        model.double().train(train)
        with forced_algorithm(forced if model is ours else None), torch.set_grad_enabled(train):
            for _ in range(2):  # in eval the second call runs with the BatchNorms folded
                model.zero_grad(set_to_none=True)
                image = x.clone().requires_grad_(train)
                outs = model(image)
        result = {f"stage{i}": o.detach() for i, o in enumerate(outs)}
        if train:
            sum(o.square().mean() for o in outs).backward()
            result["input.grad"] = image.grad
            result.update({f"{n}.grad": p.grad for n, p in model.named_parameters()})
        results.append(result)
    # Seven blocks deep, with BatchNorm over 60 values a channel on the last maps, the stem's
    # gradients gather float64 rounding up to 2e-12 of their scale; a wrong tap moves percents.
    assert_float64_equal(*results, tolerance=1e-10)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(extra_blocks=-1), "extra_blocks must be an int >= 0"),
    (dict(extra_multi_grid=(1, 2)), "extra_multi_grid must be three positive unit rates"),
    (dict(out_indices=(0, 7)), r"out_indices \(0, 7\) must lie in 0..6"),
])
def test_bad_arguments_say_what_to_change(kwargs, fragment):
    with pytest.raises(ASPPArgumentError, match=fragment):
        _cascade(**kwargs)


def test_newly_initialised_blocks_are_reported(tmp_path, monkeypatch):
    from mmseg_aspp.models import cascade as cascade_module

    messages = []
    monkeypatch.setattr(cascade_module, "print_log", lambda message, **kw: messages.append(message))
    resnet = MODELS.build(dict(type="ResNetV1c", **SMALL, **OS16))
    path = tmp_path / "resnet.pth"
    torch.save({"state_dict": resnet.state_dict()}, path)
    for copy_block4, expected in ((False, "layer5, layer6, layer7 are newly initialised"),
                                  (True, "layer5, layer6, layer7 initialised from block4's units")):
        cascade = _cascade(extra_blocks=3, init_extra_from_block4=copy_block4,
                           init_cfg=dict(type="Pretrained", checkpoint=str(path)))
        cascade.init_weights()
        assert expected in messages[-1]
        torch.testing.assert_close(cascade.layer4[0].conv1.weight, resnet.layer4[0].conv1.weight)


def test_demo_trains_and_tests_through_the_tools(tmp_path, data_root):
    config = small_config(tmp_path, DEMO, data_root, iters=2)
    work = tmp_path / "work"
    run_tool(os.path.join(TOOLS, "train.py"), config, "--work-dir", str(work))
    log = run_tool(os.path.join(TOOLS, "test.py"), config, str(work / "iter_2.pth"), "--work-dir", str(work))
    assert "mIoU" in log


def test_demo_exports_to_onnx_with_parity(tmp_path):
    pytest.importorskip("onnxruntime")
    cfg = Config.fromfile(DEMO)
    cfg.model.pretrained = None
    model = MODELS.build(cfg.model)
    randomize_(model, seed=3)
    path = tmp_path / "cascade.onnx"
    log = run_tool(os.path.join(TOOLS, "export_onnx.py"), DEMO, _checkpoint(model, tmp_path), "--out", str(path),
                   "--shape", "96", "192", "--verify")
    assert path.exists() and "verify: ok" in log


def _checkpoint(model, tmp_path):
    path = tmp_path / "demo.pth"
    torch.save({"state_dict": copy.deepcopy(model).state_dict(), "meta": {}}, path)
    return str(path)


def test_output_stride_8_doubles_every_cascaded_rate():
    from mmseg_aspp.output_stride import set_output_stride

    cfg = Config.fromfile(os.path.join(ROOT, "configs", "deeplabv3_cascade",
                                       "cascade_r50-d16-block7-mg121_4xb2-80k_cityscapes-512x1024.py"))
    cfg.model.pretrained = None
    assert set_output_stride(cfg.model, 8) == 16
    cfg.model.backbone.norm_cfg = dict(type="BN")
    with torch.device("meta"):
        backbone = MODELS.build(cfg.model.backbone)
    rates = dict(backbone.unit_rates())
    assert rates["layer4"] == [4, 8, 4] and rates["layer7"] == [32, 64, 32]
