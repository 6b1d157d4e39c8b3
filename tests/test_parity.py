"""Our ASPPHead against mmseg's on identical weights and inputs.

Exactness is proven in float64, with every way a branch can run forced in turn,
to a tolerance near float64 rounding. In fp32 the two heads round differently
(and differently on every CPU: AVX2 and AVX-512 kernels sum in other orders),
so fp32 results are judged by their distance from the float64 result: ours may
be at most a small multiple of mmseg's own fp32 distance from it.
"""
import pytest
import torch

from float_error import assert_fp32_as_exact_as_mmseg
from helpers import assert_float64_equal, head_step, twin_heads
from mmseg_aspp.atrous.kernels import tap_gemm as gemm, tap_skipping as conv, winograd
from mmseg_aspp.atrous.algorithms import dense as dense_algorithm
from mmseg_aspp.atrous.algorithms import gemm as gemm_algorithm
from mmseg_aspp.atrous.algorithms import ALGORITHMS, ConvProblem
from mmseg_aspp.atrous.aspp import plan
from mmseg_aspp.atrous.planner import forced_algorithm

F64 = torch.float64


def _inputs(batch, height, width, channels, seed=1, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, channels, height, width, generator=gen, dtype=F64).to(dtype)]


# ----------------------------------------------------------------- float64: every path
# (batch, height, width, rates): maps large for their rates (Winograd-sized), partial
# taps, a rate reaching one axis (1x3 and 3x1 crops) or both (1x1), a 1x1 map, rates
# out of order; small channel counts keep each case well under a second.
CASES = {
    "27x33": (2, 27, 33, (1, 3, 6, 12)),
    "17x33": (2, 17, 33, (1, 6, 12, 18)),
    "10x40": (2, 10, 40, (1, 6, 12, 24)),
    "40x10": (2, 40, 10, (1, 6, 12)),
    "8x8": (2, 8, 8, (1, 3, 12)),
    "1x1": (2, 1, 1, (1, 2)),
    "5x30": (2, 5, 30, (2, 1, 5)),
}
HEAD = dict(in_channels=8, channels=4, num_classes=3)


def _planned(case, forced, train, head_size=HEAD):
    """(problem and algorithm per branch, algorithm of the bottleneck) that a case runs with."""
    batch, height, width, rates = CASES[case]
    head = twin_heads(dilations=rates, **head_size, randomized=False)[0]
    x = torch.empty(batch, head_size["in_channels"], height, width)
    with forced_algorithm(forced), torch.set_grad_enabled(train):
        branches, (_, last) = plan(x, head.aspp_modules, head.dilations, head.bottleneck, "heuristic")
    return [(problem, algorithm.name) for problem, algorithm in branches], last.name


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("forced", [None, *ALGORITHMS], ids=lambda m: m or "planned")
@pytest.mark.parametrize("case", CASES)
def test_float64_equal_to_mmseg_on_every_path(case, forced, train):
    branches, last = _planned(case, forced, train)
    if forced is not None and forced not in {name for _, name in branches} | {last}:
        pytest.skip(f"{forced} takes no convolution here")
    batch, height, width, rates = CASES[case]
    ours, upstream = twin_heads(dilations=rates, **HEAD)
    ours.double(), upstream.double()
    inputs = _inputs(batch, height, width, HEAD["in_channels"], dtype=F64)
    with forced_algorithm(forced):
        result = head_step(ours, inputs, train)
    assert_float64_equal(result, head_step(upstream, inputs, train))


def test_every_algorithm_and_crop_is_forced_somewhere():
    """The cases above make each algorithm run on branches and on the bottleneck, in eval
    and in training, on every kernel crop it takes; and the heuristic's own plans of the
    real head's width use every algorithm."""
    ran, crops, planned = set(), set(), set()
    for case in CASES:
        for train in (False, True):
            # The rules are for real widths (Winograd pays from hundreds of channels).
            branches, last = _planned(case, None, train, dict(in_channels=2048, channels=512, num_classes=3))
            planned.update({name for _, name in branches} | {last})
            for forced in ALGORITHMS:
                branches, last = _planned(case, forced, train)
                ran.update((name, "branch", train) for _, name in branches)
                ran.add((last, "bottleneck", train))
                crops.update(problem.kernel for problem, name in branches if name == forced)
    for name, algorithm in ALGORITHMS.items():
        for train in (False, True):
            full_kernel = ConvProblem(2, 8, 4, 27, 33, 3, (0, 3), (0, 3), (1, 1), 1, "float64", "cpu", train, False)
            if algorithm.supports(full_kernel):  # Winograd F(4x4, 3x3) runs in inference only
                assert {(name, "branch", train), (name, "bottleneck", train)} <= ran, name
    assert {(3, 3), (1, 3), (3, 1), (1, 1)} <= crops
    assert planned == set(ALGORITHMS) - {"depthwise"}  # DeepLabV3 has no depthwise kernel (test_v3plus.py)


def _break_dense(monkeypatch):  # every full kernel loses its bottom-right tap
    real = dense_algorithm.prepared_weight

    def broken(weight, index, layout, dtype=None):
        out = real(weight, index, layout, dtype)
        if out.shape[-2:] == (3, 3):
            out = out.clone()
            out[..., 2, 2] = 0
        return out

    monkeypatch.setattr(dense_algorithm, "prepared_weight", broken)


def _break_skip(monkeypatch):  # the weight gradient of one tap is lost
    real = conv._weight_grad

    def broken(*args):
        grad = real(*args)
        grad[..., 0, 0] = 0
        return grad

    monkeypatch.setattr(conv, "_weight_grad", broken)


def _break_gemm(monkeypatch):  # one tap reads one pixel too far
    real = gemm.kernel_offsets
    monkeypatch.setattr(gemm_algorithm, "kernel_offsets", lambda *a: [(dy, dx + (dy > 0)) for dy, dx in real(*a)])


def _break_winograd(monkeypatch):  # one row of the input tile transform has the wrong sign
    real = winograd._transform

    def broken(matrix, views, out):
        if matrix in (winograd.F2.input, winograd.F4.input):
            matrix = (matrix[0], tuple(-c for c in matrix[1]), *matrix[2:])
        real(matrix, views, out)

    monkeypatch.setattr(winograd, "_transform", broken)


@pytest.mark.parametrize("forced, train, breaks", [
    ("dense", False, _break_dense), ("skip", True, _break_skip), ("gemm", False, _break_gemm),
    ("winograd", False, _break_winograd), ("winograd4", False, _break_winograd)],
    ids=["dense", "skip", "gemm", "winograd", "winograd4"])
def test_float64_check_catches_a_broken_tap(forced, train, breaks, monkeypatch):
    """The check above is sensitive: one wrong tap in any algorithm fails it."""
    breaks(monkeypatch)
    with pytest.raises(AssertionError, match="max error"):
        test_float64_equal_to_mmseg_on_every_path("27x33", forced, train)


# ----------------------------------------------------------------- fp32 against float64
def _check_fp32(shape, train, **head_overrides):
    """Ours in fp32 against mmseg's head in float64, within a few float errors (see float_error)."""
    batch, height, width = shape
    ours, upstream = twin_heads(dropout_ratio=0.0, **head_overrides)  # Dropout2d masks differ across dtypes
    inputs = _inputs(batch, height, width, ours.in_channels)
    return assert_fp32_as_exact_as_mmseg(ours, upstream, inputs, lambda head, x: head_step(head, x, train))


# (batch, height, width): odd sizes, maps smaller than the rates, one axis degenerate.
SHAPES = [(2, 45, 45), (2, 8, 8), (1, 17, 33), (2, 10, 40), (2, 1, 1), (1, 64, 20)]
RATE_SETS = [(1, 6, 12, 18), (1, 12, 24, 36), (2, 1, 5), (24,)]
NORMS = [dict(type="BN", requires_grad=True), dict(type="GN", num_groups=4), None]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dilations", RATE_SETS)
def test_fp32_eval_as_exact_as_mmseg(shape, dilations):
    _check_fp32(shape, False, dilations=dilations)


@pytest.mark.parametrize("norm_cfg", NORMS, ids=["BN", "GN", "none"])
@pytest.mark.parametrize("shape", [(2, 45, 45), (2, 8, 8), (2, 10, 40)])
def test_fp32_train_step_as_exact_as_mmseg(shape, norm_cfg):
    _check_fp32(shape, True, dilations=(1, 6, 12, 18), norm_cfg=norm_cfg)


# The benchmark's feature maps and rates (tools/benchmark.py). Apart from Winograd's width rule
# (lifted, see planned_as_wide) which path each branch takes depends only on map size and
# rates, so narrow heads exercise the same paths.
BENCHMARK_MAPS = [(64, 128), (64, 64), (97, 97), (128, 256), (32, 32), (16, 16)]
BENCHMARK_HEAD = dict(dilations=(1, 12, 24, 36), in_channels=32, channels=16, num_classes=19)


# These measure our core's rounding against torch's convolutions; mmseg's head is the same
# code on both stacks and is compared in float64 on each, so they run once.
@pytest.mark.stack_independent
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("size", BENCHMARK_MAPS, ids=lambda s: f"{s[0]}x{s[1]}")
def test_fp32_benchmark_shapes_eval(size, batch, planned_as_wide):
    _check_fp32((batch, *size), False, **BENCHMARK_HEAD)


@pytest.mark.stack_independent
@pytest.mark.parametrize("size", BENCHMARK_MAPS, ids=lambda s: f"{s[0]}x{s[1]}")
def test_fp32_benchmark_shapes_train_step(size, planned_as_wide):
    _check_fp32((2, *size), True, **BENCHMARK_HEAD)


@pytest.mark.stack_independent
def test_fp32_full_width_eval():
    # DeepLabV3's real head width, 2048 -> 512 channels, on a map where a branch and the
    # bottleneck run as Winograd and two branches skip taps.
    judgement = _check_fp32((1, 48, 64), False, dilations=(1, 12, 24, 36), in_channels=2048, channels=512,
                            num_classes=19)
    assert judgement.errors["logits"][0] < 1e-5


def test_multi_input_transform_matches():
    overrides = dict(in_channels=[8, 8], in_index=[0, 1], input_transform="resize_concat")
    gen = torch.Generator().manual_seed(3)
    inputs = [torch.randn(1, 8, 12, 12, generator=gen, dtype=F64), torch.randn(1, 8, 6, 6, generator=gen, dtype=F64)]
    ours, upstream = twin_heads(**overrides)
    ours.double(), upstream.double()
    assert_float64_equal(head_step(ours, inputs, False), head_step(upstream, inputs, False))


def test_branch_batch_norm_on_channels_last_conv_output_matches_mmseg():
    """Tap-skipping branches produce channels-last maps; with batch statistics their
    norm must match mmseg's NCHW result even when |mean| >> std, where PyTorch's
    channels-last statistics flip ReLU decisions (input-gradient error up to 64)."""
    from mmcv.cnn import ConvModule

    from mmseg_aspp.atrous.aspp import _norm_act

    layer = ConvModule(4, 2, 3, norm_cfg=dict(type="BN")).train()
    with torch.no_grad():
        layer.bn.weight.copy_(torch.tensor([-1.5, 0.4]))
        layer.bn.bias.copy_(torch.tensor([-0.3, -0.5]))
    for seed in range(5):
        gen = torch.Generator().manual_seed(seed)
        conv_out = torch.randn(3, 2, 54, 52, generator=gen) * 0.02 + 8
        grad = torch.randn(conv_out.shape, generator=gen)
        ref_in = conv_out.clone().requires_grad_()
        ref = layer.activate(layer.bn(ref_in))
        ours_in = conv_out.contiguous(memory_format=torch.channels_last).requires_grad_()
        ours = _norm_act(layer, ours_in)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
        (ours_grad,) = torch.autograd.grad(ours, ours_in, grad)
        (ref_grad,) = torch.autograd.grad(ref, ref_in, grad)
        torch.testing.assert_close(ours_grad, ref_grad, atol=1e-5, rtol=1e-4)
