"""DeepLabV3+: our DepthwiseSeparableASPPHead against mmseg's, on identical weights and inputs."""

import pytest
import torch
from mmengine.config import Config
from mmseg.registry import MODELS

from float_error import assert_fp32_as_exact_as_mmseg
from helpers import assert_float64_equal, head_cfg, head_step, randomize_, twin_heads
from mmseg_aspp.atrous.algorithms import ALGORITHMS
from mmseg_aspp.atrous.aspp import plan
from mmseg_aspp.atrous.planner import forced_algorithm
from mmseg_aspp.models import aspp_head as aspp_head_module
from mmseg_aspp.models.aspp_head import ASPPArgumentError, BatchOfOneError
from tooling import ROOT

SEP = "DepthwiseSeparableASPPHead"
F64 = torch.float64
DECODERS = {"decoder": dict(c1_in_channels=4, c1_channels=3), "no decoder": dict(c1_in_channels=0, c1_channels=0)}
HEAD = dict(in_channels=16, in_index=3, channels=8, num_classes=5)
# (batch, height, width, rates) of the stride-8 map; the stride-4 map is twice the size.
CASES = {
    "27x33": (2, 27, 33, (1, 3, 6, 12)),  # Winograd-sized for the bottleneck, partial taps
    "10x40": (2, 10, 40, (1, 6, 12, 24)),  # rates reaching the height: 1x3 depthwise crops
    "8x8": (2, 8, 8, (1, 3, 12)),  # a 1x1 crop; small enough for per-tap GEMMs
    "1x1": (2, 1, 1, (1, 2)),
}


def _inputs(batch, height, width, seed=1, dtype=torch.float32):
    """[stride-4 features, two unused levels, stride-8 features], as a ResNet's outputs."""
    gen = torch.Generator().manual_seed(seed)
    c1 = torch.randn(batch, 4, 2 * height, 2 * width, generator=gen, dtype=F64)
    c4 = torch.randn(batch, HEAD["in_channels"], height, width, generator=gen, dtype=F64)
    return [c1.to(dtype), c1.to(dtype), c1.to(dtype), c4.to(dtype)]


def _twins(decoder, rates, **overrides):
    return twin_heads(SEP, dilations=rates, **HEAD, **DECODERS[decoder], **overrides)


# Every algorithm with the decoder; without it (which changes nothing the algorithms see) the plan.
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("decoder, forced", [("decoder", None), *(("decoder", name) for name in ALGORITHMS),
                                             ("no decoder", None)], ids=str)
@pytest.mark.parametrize("case", CASES)
def test_float64_equal_to_mmseg(case, decoder, forced, train):
    batch, height, width, rates = CASES[case]
    ours, upstream = _twins(decoder, rates)
    ours.double(), upstream.double()
    inputs = _inputs(batch, height, width, dtype=F64)
    with forced_algorithm(forced), torch.set_grad_enabled(train):
        branches, (_, last) = plan(inputs[3], ours.aspp_modules, ours.dilations, ours.bottleneck, "heuristic")
    # Every separable branch's depthwise kernel takes the depthwise algorithm in inference.
    depthwise = set() if train else {"depthwise"}
    if forced is not None and forced not in {a.name for _, a in branches} | {last.name} | depthwise:
        pytest.skip(f"{forced} takes no convolution here")
    with forced_algorithm(forced):
        result = head_step(ours, inputs, train)
    expected = head_step(upstream, inputs, train)
    if train and decoder == "decoder":
        assert {"input0.grad", "input3.grad"} <= set(expected)  # both feature levels get gradients
    assert_float64_equal(result, expected)


@pytest.mark.stack_independent  # our rounding against torch's; mmseg's head is compared in float64 on both
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("shape", [(2, 27, 33), (2, 64, 64), (1, 17, 9)])
def test_fp32_as_exact_as_mmseg(shape, decoder, train):
    if train and shape[0] == 1:
        pytest.skip("BatchNorm of the image-pool branch needs 2 images to train")
    ours, upstream = _twins(decoder, (1, 12, 24, 36), dropout_ratio=0.0)
    assert_fp32_as_exact_as_mmseg(ours, upstream, _inputs(*shape), lambda head, x: head_step(head, x, train))


@pytest.mark.parametrize("decoder", DECODERS)
def test_state_dict_is_mmsegs(decoder):
    ours = MODELS.build(head_cfg("ours", SEP, **HEAD, **DECODERS[decoder]))
    upstream = MODELS.build(head_cfg("upstream", SEP, **HEAD, **DECODERS[decoder]))
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in upstream.state_dict().items()}
    assert any(".depthwise_conv." in k for k in ours.state_dict())


@pytest.mark.parametrize("c1_in, c1, fragment", [(0, 48, "c1_channels must be 0"), (-1, 0, "c1_in_channels must be"),
                                                  (8, 2.5, "c1_channels must be")])
def test_bad_decoder_arguments(c1_in, c1, fragment):
    with pytest.raises(ASPPArgumentError, match=fragment):
        MODELS.build(head_cfg("ours", SEP, **HEAD, c1_in_channels=c1_in, c1_channels=c1))


def test_options_apply(monkeypatch):
    messages = []
    monkeypatch.setattr(aspp_head_module, "print_log", lambda msg, **kw: messages.append(msg))
    head = MODELS.build(head_cfg("ours", SEP, **HEAD, **DECODERS["decoder"], dilations=(1, 6, 12, 18),
                                 output_stride=8))
    assert head.dilations == (1, 12, 24, 36)
    head.train()
    with pytest.raises(BatchOfOneError, match="DepthwiseSeparableASPPHead: training with 1 image"):
        head(_inputs(1, 9, 9))
    no_bn = MODELS.build(head_cfg("ours", SEP, **HEAD, **DECODERS["decoder"], pool_norm_cfg=None)).train()
    assert no_bn(_inputs(1, 9, 9)).shape == (1, 5, 18, 18)  # trains with one image
    head.eval()
    with torch.no_grad():
        head(_inputs(1, 20, 30))
    assert "DepthwiseSeparableASPPHead: at a 20x30 feature map" in messages[-1]
    assert "rate 24 as a 1x3 conv" in messages[-1]


def _segmentor(folder):
    name = "deeplabv3plus_r18-d8_1xb4-300it_synthetic-cityscapes-96x192.py"
    return MODELS.build(Config.fromfile(f"{ROOT}/configs/{folder}/{name}").model)


def test_whole_segmentor_predicts_as_mmsegs():
    ours, upstream = _segmentor("demo"), _segmentor("deeplabv3plus_upstream")
    randomize_(upstream, seed=4)
    ours.load_state_dict(upstream.state_dict(), strict=True)
    image = torch.randn(2, 3, 80, 112, generator=torch.Generator().manual_seed(2), dtype=F64)
    metas = [dict(img_shape=(80, 112), ori_shape=(80, 112), pad_shape=(80, 112))] * 2
    results = []
    for model in (ours, upstream):
        model.double().eval()
        with torch.no_grad():
            results.append({"logits": model.encode_decode(image, metas)})
    assert results[0]["logits"].shape == (2, 19, 80, 112)
    assert_float64_equal(*results)
