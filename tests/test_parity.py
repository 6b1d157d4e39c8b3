"""Our ASPPHead against mmseg's on identical weights and inputs (fp32)."""
import pytest
import torch

from helpers import seg_samples, twin_heads

# (batch, height, width): odd sizes, maps smaller than the rates, one axis degenerate.
SHAPES = [(2, 45, 45), (2, 8, 8), (1, 17, 33), (2, 10, 40), (2, 1, 1), (1, 64, 20)]
RATE_SETS = [(1, 6, 12, 18), (1, 12, 24, 36), (2, 1, 5), (24,)]
NORMS = [dict(type="BN", requires_grad=True), dict(type="GN", num_groups=4), None]
ATOL = 1e-5


def _inputs(batch, height, width, seed=1, channels=16):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, channels, height, width, generator=gen)]


def _check_eval_matches(inputs, atol=ATOL, **head_overrides):
    """Eval logits of twin heads (same weights) agree on ``inputs``."""
    ours, upstream = twin_heads(**head_overrides)
    ours.eval(), upstream.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(inputs), upstream(inputs), atol=atol, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dilations", RATE_SETS)
def test_eval_logits_match(shape, dilations):
    _check_eval_matches(_inputs(*shape), dilations=dilations)


def _check_train_step_matches(ours, upstream, shape, channels=16):
    """Logits, loss, parameter and input gradients and BN buffers of one train step agree."""
    ours.train(), upstream.train()
    batch, height, width = shape
    samples = seg_samples(batch, height * 8, width * 8, num_classes=ours.num_classes)

    results = []
    for head in (ours, upstream):
        inputs = [t.requires_grad_() for t in _inputs(*shape, channels=channels)]
        torch.manual_seed(0)  # same Dropout2d mask for both heads
        logits = head(inputs)
        torch.manual_seed(0)
        losses = head.loss(inputs, samples, train_cfg=dict())
        losses["loss_ce"].backward()
        grads = {n: p.grad.clone() for n, p in head.named_parameters()}
        buffers = {n: b.clone() for n, b in head.named_buffers()}
        results.append((logits.detach(), losses, grads, buffers, inputs[0].grad))

    (l_ours, loss_ours, g_ours, b_ours, x_ours), (l_up, loss_up, g_up, b_up, x_up) = results
    torch.testing.assert_close(l_ours, l_up, atol=ATOL, rtol=0)
    assert loss_ours.keys() == loss_up.keys()
    for key in loss_up:
        torch.testing.assert_close(loss_ours[key], loss_up[key], atol=ATOL, rtol=0)
    assert g_ours.keys() == g_up.keys()
    for name in g_up:
        torch.testing.assert_close(g_ours[name], g_up[name], atol=ATOL, rtol=1e-4, msg=name)
    # BN running statistics are updated identically.
    for name in b_up:
        torch.testing.assert_close(b_ours[name], b_up[name], atol=ATOL, rtol=0, msg=name)
    torch.testing.assert_close(x_ours, x_up, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("norm_cfg", NORMS, ids=["BN", "GN", "none"])
@pytest.mark.parametrize("shape", [(2, 45, 45), (2, 8, 8), (2, 10, 40)])
def test_train_logits_loss_and_gradients_match(shape, norm_cfg):
    _check_train_step_matches(*twin_heads(dilations=(1, 6, 12, 18), norm_cfg=norm_cfg), shape)


# The benchmark's feature maps and rates (tools/benchmark.py). Which path each branch
# takes depends only on map size and rates, so narrow heads exercise the same paths.
BENCHMARK_MAPS = [(64, 128), (64, 64), (97, 97), (128, 256), (32, 32), (16, 16)]
BENCHMARK_RATES = (1, 12, 24, 36)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("size", BENCHMARK_MAPS, ids=lambda s: f"{s[0]}x{s[1]}")
def test_benchmark_shapes_eval_match(size, batch):
    _check_eval_matches(_inputs(batch, *size, channels=32), dilations=BENCHMARK_RATES, in_channels=32,
                        channels=16, num_classes=19)


@pytest.mark.parametrize("size", BENCHMARK_MAPS, ids=lambda s: f"{s[0]}x{s[1]}")
def test_benchmark_shapes_train_step_match(size):
    ours, upstream = twin_heads(dilations=BENCHMARK_RATES, in_channels=32, channels=16, num_classes=19)
    _check_train_step_matches(ours, upstream, (2, *size), channels=32)


@pytest.mark.parametrize("shape", [(1, 64, 128), (2, 16, 16)])
def test_full_width_eval_logits_within_1e4(shape):
    # DeepLabV3's real head width: 2048 input channels, 512 in every branch.
    _check_eval_matches(_inputs(*shape, channels=2048), atol=1e-4, dilations=BENCHMARK_RATES, in_channels=2048,
                        channels=512, num_classes=19)


def test_multi_input_transform_matches():
    overrides = dict(in_channels=[8, 8], in_index=[0, 1], input_transform="resize_concat")
    gen = torch.Generator().manual_seed(3)
    inputs = [torch.randn(1, 8, 12, 12, generator=gen), torch.randn(1, 8, 6, 6, generator=gen)]
    _check_eval_matches(inputs, **overrides)


@pytest.mark.parametrize("shape", [(1, 16, 16), (2, 8, 12), (1, 5, 30)])
def test_small_map_gemm_path_matches_in_inference(shape):
    # Small inputs without autograd take the per-tap GEMM path (mmseg_aspp.atrous.gemm).
    from mmseg_aspp.atrous.aspp import GEMM, GEMM_MAX_PIXELS, plan_branches

    batch, height, width = shape
    assert batch * height * width <= GEMM_MAX_PIXELS
    dilations = (1, 4, 7, 24)
    assert GEMM in {p.mode for p in plan_branches(height, width, dilations, batch, True)}
    _check_eval_matches(_inputs(*shape), dilations=dilations)


@pytest.mark.parametrize("shape", [(1, 40, 52), (2, 27, 33)])
def test_phase_winograd_path_matches_in_inference(shape):
    # Maps large for their rates run those branches as Winograd per phase in inference.
    from mmseg_aspp.atrous.aspp import WINOGRAD, plan_branches

    batch, height, width = shape
    dilations = (1, 3, 6, 12)
    modes = [p.mode for p in plan_branches(height, width, dilations, batch, True)]
    assert modes.count(WINOGRAD) >= 2, modes
    _check_eval_matches(_inputs(*shape), dilations=dilations)


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
        torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)
        (ours_grad,) = torch.autograd.grad(ours, ours_in, grad)
        (ref_grad,) = torch.autograd.grad(ref, ref_in, grad)
        torch.testing.assert_close(ours_grad, ref_grad, atol=ATOL, rtol=1e-4)
