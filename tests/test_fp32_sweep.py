"""Property-based fp32 sweep: both heads, any map, batch, rate set and class count, eval and
train, the plan and every forced algorithm; every tensor (logits, loss, each gradient, the
inputs' gradients, BN buffers) within a few times mmseg's own fp32 error of float64, along the
same ReLU decisions (float_error.py)."""
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings, target
from hypothesis import strategies as st

from float_error import assert_fp32_as_exact_as_mmseg
from helpers import head_step, twin_heads
from mmseg_aspp.atrous.algorithms import ALGORITHMS
from mmseg_aspp.atrous.planner import forced_algorithm
from test_parity import _break_dense, _break_gemm, _break_skip, _break_winograd

HEADS = {
    "V3": ("ASPPHead", {}),
    "V3+ decoder": ("DepthwiseSeparableASPPHead", dict(c1_in_channels=6, c1_channels=4)),
    "V3+ no decoder": ("DepthwiseSeparableASPPHead", dict(c1_in_channels=0, c1_channels=0)),
}
RATE_SETS = [(1, 6, 12, 18), (1, 12, 24, 36), (1, 2, 3, 4), (1, 3, 6, 12), (2, 1, 5)]
# Sizes on both sides of every planner threshold for these rates: per-tap GEMMs up to 512
# pixels, Winograd from phases of a few tiles, kernels cropped once a rate reaches the map.
LENGTHS = st.one_of(st.sampled_from([1, 2, 3, 5, 8, 11, 16, 17, 24, 25, 36, 37, 48, 64]), st.integers(1, 72))
PLANS = [None, *ALGORITHMS]


@st.composite
def cases(draw):
    height = draw(LENGTHS)
    width = height if draw(st.booleans()) else draw(LENGTHS)
    train = draw(st.booleans())
    batch = draw(st.integers(2, 3) if train else st.integers(1, 3))  # image-pool BN trains on 2 or more
    return dict(head=draw(st.sampled_from(sorted(HEADS))), batch=batch, height=height, width=width,
                rates=draw(st.sampled_from(RATE_SETS)), num_classes=draw(st.sampled_from([2, 7, 19])),
                train=train, forced=draw(st.sampled_from(PLANS)))


def _inputs(batch, height, width, in_channels, c1_channels, seed):
    gen = torch.Generator().manual_seed(seed)
    c4 = torch.randn(batch, in_channels, height, width, generator=gen)
    c1 = torch.randn(batch, max(c1_channels, 1), 2 * height, 2 * width, generator=gen)
    return [c1, c1, c1, c4]


def _check(case: dict, default_init: bool):
    torch.manual_seed(0)
    head, extra = HEADS[case["head"]]
    ours, upstream = twin_heads(head, dilations=case["rates"], num_classes=case["num_classes"], in_channels=12,
                                channels=6, in_index=3, dropout_ratio=0.0, randomized=not default_init, **extra)
    inputs = _inputs(case["batch"], case["height"], case["width"], 12, extra.get("c1_in_channels", 0), seed=1)
    train, forced = case["train"], case["forced"]

    def run(module, x):  # labels at twice the stride-8 map: the loss still resizes V3's logits
        return head_step(module, x, train, label_scale=2 if case["head"] == "V3" else 1)

    def ours_run(module, x):
        with forced_algorithm(forced):
            return run(module, x)

    return assert_fp32_as_exact_as_mmseg(ours, upstream, inputs, run, ours_run=ours_run)


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(), default_init=st.booleans())
def test_fp32_within_a_few_float_errors_everywhere(case, default_init):
    judgement = _check(case, default_init)
    target(judgement.worst_ratio, label=f"{case['head']} {'train' if case['train'] else 'eval'}")
    if judgement.flips or judgement.mmseg_flips:
        event("a ReLU flipped within rounding of zero (ours or mmseg's)")


@pytest.mark.parametrize("forced, breaks", [("skip", _break_skip), ("gemm", _break_gemm), ("winograd", _break_winograd),
                                            ("dense", _break_dense)])
@pytest.mark.parametrize("head", sorted(HEADS))
def test_sweep_catches_a_broken_tap(head, forced, breaks, monkeypatch):
    breaks(monkeypatch)
    case = dict(head=head, batch=2, height=27, width=33, rates=(1, 3, 6, 12), num_classes=19, train=forced == "skip",
                forced=forced)
    with pytest.raises(AssertionError, match="relative error|flipped"):
        _check(case, default_init=False)
