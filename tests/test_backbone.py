"""mmseg's ResNetV1c built with mmseg_aspp.Conv2d against the same backbone with plain
nn.Conv2d: every stage's output, every gradient and BN buffer equal in float64 with each
algorithm forced, BatchNorm folding exact whatever reads a convolution's output, fp32 within a
few times mmseg's own error; and whole segmentors of the shipped recipes equal their upstream
twins."""
import copy

import pytest
import torch
from mmengine.config import Config
from mmseg.registry import MODELS
from torch import nn

from float_error import assert_fp32_as_exact_as_mmseg
from helpers import assert_float64_equal, randomize_
from mmseg_aspp.atrous import buffers, weights
from mmseg_aspp.atrous.algorithms import ALGORITHMS
from mmseg_aspp.atrous.planner import forced_algorithm
from mmseg_aspp.models import PlannedConv2d
from mmseg_aspp.models import conv as conv_module
from test_parity import _break_dense, _break_skip, _break_winograd
from tooling import ROOT

F64 = torch.float64
OURS_CONV = dict(type="mmseg_aspp.Conv2d")
# ResNet-50's bottlenecks at a sixteenth of the width, output stride 8 (D8) or 16 with
# multi-grid (the D16-MG124 recipe); maps of 9x7 and 5x4 at stride 8 and 16 exercise crops.
BACKBONES = {
    "D8": dict(dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1)),
    "D16-MG124": dict(dilations=(1, 1, 1, 2), strides=(1, 2, 2, 1), multi_grid=(1, 2, 4)),
}


def _backbone(name, conv_cfg):
    cfg = dict(type="ResNetV1c", depth=50, stem_channels=8, base_channels=4, num_stages=4, out_indices=(0, 1, 2, 3),
               norm_cfg=dict(type="BN", requires_grad=True), contract_dilation=True, conv_cfg=conv_cfg,
               **BACKBONES[name])
    return MODELS.build(cfg)


def _twins(name="D8"):
    upstream = _backbone(name, None)
    randomize_(upstream, seed=3)
    ours = _backbone(name, OURS_CONV)
    ours.load_state_dict(upstream.state_dict(), strict=True)
    return ours, upstream


def _image(batch=2, height=72, width=56, dtype=torch.float32, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, height, width, generator=gen, dtype=F64).to(dtype)


def _step(backbone, x, train):
    """Every stage's output; in training also every gradient and BN buffer."""
    backbone.train(train)
    if not train:
        with torch.no_grad():
            return {f"stage{i}": out.clone() for i, out in enumerate(backbone(x))}
    backbone.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    outs = backbone(x)
    gen = torch.Generator().manual_seed(7)
    sum((out * torch.randn(out.shape, generator=gen, dtype=out.dtype)).sum() for out in outs).backward()
    result = {f"stage{i}": out.detach() for i, out in enumerate(outs)}
    result["input.grad"] = x.grad
    result.update({f"{n}.grad": p.grad for n, p in backbone.named_parameters()})
    result.update({n: b.clone() for n, b in backbone.named_buffers() if b.is_floating_point()})
    return result


def test_every_convolution_is_ours_and_checkpoints_load_strictly():
    ours, upstream = _twins()
    convs = [m for m in ours.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(isinstance(m, PlannedConv2d) for m in convs)
    assert ours.state_dict().keys() == upstream.state_dict().keys()
    assert type(ours) is type(upstream)  # mmseg's own backbone class


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("forced", [None, *ALGORITHMS], ids=lambda m: m or "planned")
@pytest.mark.parametrize("name", BACKBONES)
def test_float64_equal_to_mmseg(name, forced, train):
    ours, upstream = _twins(name)
    ours.double(), upstream.double()
    x = _image(dtype=F64)
    expected = _step(upstream, x, train)
    with forced_algorithm(forced):
        first = _step(ours, x, train)
        second = _step(ours, x, train)  # in eval with each BatchNorm now folded into its convolution
    assert_float64_equal(first, expected)
    if train:
        expected = _step(upstream, x, train)  # the second step from the statistics the first left
    assert_float64_equal(second, expected)


def test_inference_folds_every_batchnorm(monkeypatch):
    """After one call each eval BatchNorm is folded: it computes nothing itself."""
    ours, _ = _twins()
    ours.eval()
    x = _image()
    calls = []
    real = torch.batch_norm  # what F.batch_norm computes with
    monkeypatch.setattr(torch, "batch_norm", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        ours(x)
        learned = len(calls)
        calls.clear()
        ours(x)
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in ours.modules())
    assert learned == norms and not calls
    assert weights.prepared_bytes() > 0


class _ConvNormAndRaw(nn.Module):
    """A convolution whose output a BatchNorm and then something else read."""

    def __init__(self, conv_type):
        super().__init__()
        self.conv = conv_type(4, 6, 3, padding=2, dilation=2)
        self.norm = nn.BatchNorm2d(6)

    def forward(self, x):
        out = self.conv(x)
        normalised = self.norm(out).relu_()  # in place on the values handed to the norm
        return normalised + out * 2 + self.norm(out)


def test_fold_is_exact_whatever_reads_the_output():
    ours = _ConvNormAndRaw(PlannedConv2d)
    upstream = _ConvNormAndRaw(nn.Conv2d)
    randomize_(upstream)
    ours.load_state_dict(upstream.state_dict())
    ours.double().eval(), upstream.double().eval()
    x = _image(1, 9, 11, F64)[:, :1].expand(1, 4, 9, 11).contiguous()
    with torch.no_grad():
        expected = upstream(x)
        for _ in range(3):
            torch.testing.assert_close(ours(x), expected, rtol=1e-12, atol=1e-12)
        # Statistics loaded in place, or a new BatchNorm: the fold follows or stops.
        ours.norm.running_mean.add_(0.5)
        upstream.norm.running_mean.add_(0.5)
        for _ in range(2):
            torch.testing.assert_close(ours(x), upstream(x), rtol=1e-12, atol=1e-12)
        ours.norm = upstream.norm = copy.deepcopy(upstream.norm).requires_grad_(False)
        ours.norm.running_var.mul_(2)
        for _ in range(2):
            torch.testing.assert_close(ours(x), upstream(x), rtol=1e-12, atol=1e-12)


def test_a_wrong_fold_is_caught(monkeypatch):
    """The float64 check sees a fold that uses the wrong epsilon."""
    real = conv_module.folded
    monkeypatch.setattr(conv_module, "folded", lambda w, b, norm: real(w, b, (*norm[:4], norm[4] * 10)))
    with pytest.raises(AssertionError, match="max error"):
        test_float64_equal_to_mmseg("D8", None, False)


@pytest.mark.parametrize("forced, train, breaks", [("winograd4", False, _break_winograd), ("dense", False, _break_dense),
                                                   ("skip", True, _break_skip)], ids=["winograd4", "dense", "skip"])
def test_a_broken_tap_is_caught(forced, train, breaks, monkeypatch):
    """One wrong tap in an algorithm the backbone runs fails its float64 check."""
    breaks(monkeypatch)
    with pytest.raises(AssertionError, match="max error"):
        test_float64_equal_to_mmseg("D8", forced, train)


def test_buffers_are_reused_only_when_free():
    like = torch.empty(0)
    first = buffers.empty((1024, 1024), like)
    pointer = first.data_ptr()
    view = first[3:]
    del first
    second = buffers.empty((1024, 1024), like)
    assert second.data_ptr() != pointer  # the view still uses the first block
    del view, second
    assert buffers.empty((1024, 1024), like).data_ptr() == pointer


@pytest.mark.stack_independent
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("shape", [(2, 72, 56), (1, 97, 65), (2, 33, 40)])
def test_fp32_as_exact_as_mmseg(shape, train):
    if train and shape[0] == 1:
        shape = (2, *shape[1:])
    ours, upstream = _twins()
    x = _image(*shape)

    def run(backbone, inputs):
        return _step(backbone, inputs[0], train)

    if not train:
        run(ours, [x])  # the judged call runs with every BatchNorm folded
    assert_fp32_as_exact_as_mmseg(ours, upstream, [x], run)


# ----------------------------------------------------------------- whole segmentors
RECIPES = {
    "V3": "deeplabv3/deeplabv3_r50-d8_4xb2-40k_cityscapes-512x1024.py",
    "V3+": "deeplabv3plus/deeplabv3plus_r50-d8_4xb2-40k_cityscapes-512x1024.py",
    "V3 D16-MG124": "deeplabv3/deeplabv3_r101-d16-mg124_4xb2-40k_cityscapes-512x1024.py",
}


def _segmentor(recipe, upstream):
    path = RECIPES[recipe]
    if upstream:
        folder, name = path.split("/")
        path = f"{folder}_upstream/{name}"
    cfg = Config.fromfile(f"{ROOT}/configs/{path}").model
    cfg.pretrained = None
    norm = dict(type="BN", requires_grad=True)
    # The recipe's structure at a sixteenth of its width.
    cfg.backbone.update(depth=50, stem_channels=8, base_channels=4, norm_cfg=norm)
    cfg.decode_head.update(in_channels=128, channels=8, norm_cfg=norm, dropout_ratio=0.0)
    if "c1_in_channels" in cfg.decode_head:
        cfg.decode_head.update(c1_in_channels=16, c1_channels=4)
    cfg.auxiliary_head.update(in_channels=64, channels=4, norm_cfg=norm, dropout_ratio=0.0)
    return MODELS.build(cfg)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("recipe", RECIPES)
def test_whole_segmentor_float64_equal_to_upstream_twin(recipe, train):
    ours, upstream = _segmentor(recipe, False), _segmentor(recipe, True)
    randomize_(upstream, seed=2)
    ours.load_state_dict(upstream.state_dict(), strict=True)
    ours.double(), upstream.double()
    image = _image(2, 64, 80, F64)
    metas = [dict(img_shape=(64, 80), ori_shape=(64, 80), pad_shape=(64, 80))] * 2
    results = []
    for model in (ours, upstream):
        model.train(train)
        with torch.set_grad_enabled(train):  # twice: in eval the second call runs folded
            logits = [model.encode_decode(image, metas) for _ in range(2)]
        result = {"logits": logits[-1].detach()}
        if train:
            logits[-1].square().mean().backward()
            result.update({f"{n}.grad": p.grad for n, p in model.named_parameters() if p.grad is not None})
        results.append(result)
    assert_float64_equal(*results)


def test_free_buffers_beyond_the_limit_are_released(monkeypatch):
    monkeypatch.setattr(buffers, "MAX_FREE_BYTES", 3 * 2**20)
    monkeypatch.setattr(buffers, "_blocks", [])
    like = torch.empty(0)
    held = [buffers.empty((2**18,), like) for _ in range(3)]  # 1 MB each, all in use
    assert buffers.kept_bytes() == 3 * 2**20
    del held
    buffers.empty((2**20,), like)  # 4 MB: the free 1 MB blocks make room for it
    assert buffers.kept_bytes() == 4 * 2**20
