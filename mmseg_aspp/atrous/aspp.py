"""ASPP forward that computes only what contributes to the output.

Every step is exact (same parameters, same function up to float rounding):

* atrous branches drop kernel rows/columns that only read zero padding
  (a branch whose rate reaches the map size becomes 1x3, 3x1 or 1x1);
* the image-pool branch is constant over the map, so its share of the 3x3
  bottleneck is a per-pixel sum of at most nine projected vectors instead of
  a convolution over a broadcast map;
* each remaining convolution (the branches, and the bottleneck over the
  normalised branches, fed to it one at a time) runs with the algorithm the
  planner picks for its shape and device (``planner.py``, ``algorithms/``):
  the plain convolution, channels-last tap skipping, per-tap GEMMs or
  Winograd F(2x2, 3x3) or F(4x4, 3x3); in inference the branches share one copy of the input
  in the layout they read, made in the same pass as the cast to the compute dtype.

When the forward is captured as a graph (ONNX export, ``torch.jit.trace``,
``torch.export``) or the plan is ``"reference"``, the plain formula in
``reference.py`` runs instead: the choices above are made in Python from the
map size at run time, so a captured graph would hard-wire them for the example
input's size.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .algorithms import Algorithm, ConvProblem
from .algorithms.base import compute_dtype
from .geometry import effective_kernel
from .planner import choose, deterministic_requested, resolve_mode
from .reference import aspp_features_reference, is_capturing


def _border_masks(height: int, width: int, device: torch.device, dtype: torch.dtype):
    """(3, H) and (3, W) masks: does tap k of a 3x3, padding-1 conv land at y/x."""

    def mask(length: int) -> Tensor:
        m = torch.ones(3, length, device=device, dtype=dtype)
        m[0, 0] = 0
        m[2, length - 1] = 0
        return m

    return mask(height), mask(width)


def _norm_act(layer: nn.Module, out: Tensor) -> Tensor:
    """Apply a ConvModule's norm and activation to an already computed conv."""
    if layer.conv.bias is not None:
        out = out + layer.conv.bias.view(1, -1, 1, 1)
    if layer.with_norm:
        if layer.norm.training:
            # Batch statistics of a channels-last map come out less accurate in PyTorch
            # (1.9e-5 vs 9e-7 relative when |mean| >> std), enough to flip the following
            # ReLU at values near zero and so change gradients; NCHW matches mmseg.
            out = out.contiguous()
        out = layer.norm(out)
    if layer.with_activation:
        out = layer.activate(out)
    return out


def _pool_bottleneck_term(weight: Tensor, pooled: Tensor, height: int, width: int) -> Tensor:
    """Bottleneck-conv contribution of a spatially constant input map.

    Args:
        weight: (C_out, C_pool, 3, 3) slice of the bottleneck weight.
        pooled: (N, C_pool) image-pool features.
    """
    per_tap = torch.einsum("oikl,ni->nokl", weight, pooled)
    row_mask, col_mask = _border_masks(height, width, pooled.device, per_tap.dtype)
    return torch.einsum("nokl,ky,lx->noyx", per_tap, row_mask, col_mask)


def _planned_conv(branch: nn.Module) -> nn.Module:
    """The ConvModule of a branch whose convolution the planner handles: the branch itself, or
    the pointwise part of a depthwise-separable branch (DeepLabV3+)."""
    return getattr(branch, "pointwise_conv", branch)


def conv_problems(x: Tensor, branches: Sequence[nn.Module], rates: Sequence[int],
                  bottleneck_in: int, out_channels: int) -> tuple[list[ConvProblem], ConvProblem]:
    """The convolutions of one ASPP call: each branch's (kernel cropped to the taps that read
    the map; 1x1 for a separable branch's pointwise part) and the bottleneck's over the
    concatenated branches."""
    batch, _, height, width = x.shape
    common = dict(batch=batch, height=height, width=width, dtype=str(compute_dtype(x)).removeprefix("torch."),
                  device=x.device.type, grad=torch.is_grad_enabled(), deterministic=deterministic_requested())
    problems = []
    for branch, rate in zip(branches, rates):
        conv = _planned_conv(branch).conv
        if conv.kernel_size == (1, 1):
            size, rate, (rows, cols, padding) = 1, 1, (slice(0, 1), slice(0, 1), (0, 0))
        else:
            size, (rows, cols, padding) = 3, effective_kernel(height, width, rate)
        problems.append(ConvProblem(in_channels=conv.in_channels, out_channels=conv.out_channels, kernel_size=size,
                                    rows=(rows.start, rows.stop), cols=(cols.start, cols.stop),
                                    padding=padding, rate=rate, **common))
    bottleneck = ConvProblem(in_channels=bottleneck_in, out_channels=out_channels, kernel_size=3, rows=(0, 3),
                             cols=(0, 3), padding=(1, 1), rate=1, **common)
    return problems, bottleneck


def plan(x: Tensor, branches: Sequence[nn.Module], rates: Sequence[int], bottleneck: nn.Module,
         mode: str = "auto") -> tuple[list[tuple[ConvProblem, Algorithm]], tuple[ConvProblem, Algorithm]]:
    """The algorithm each convolution of ``aspp_features(x, ...)`` runs with (mode not ``reference``)."""
    mode = resolve_mode(mode, x.device)
    branch_channels = sum(_planned_conv(b).conv.out_channels for b in branches)
    problems, last = conv_problems(x, branches, rates, branch_channels, bottleneck.conv.out_channels)
    # The spatial kernels' algorithms decide the layout of the shared input (_branch_input); the
    # 1x1 ones (a separable branch's pointwise part is fed in the same layout) then choose.
    channels_last = _reads_channels_last([(p, choose(p, mode)) for p in problems if p.kernel != (1, 1)])
    problems = [p if p.kernel != (1, 1) else p._replace(channels_last=channels_last) for p in problems]
    return [(p, choose(p, mode)) for p in problems], (last, choose(last, mode))


def _reads_channels_last(branch_plan: Sequence[tuple[ConvProblem, Algorithm]]) -> bool:
    """Whether the branches' shared input is made channels-last: in inference, when a spatial
    (not 1x1) kernel's algorithm reads that layout fastest."""
    return not torch.is_grad_enabled() and any(
        p.kernel != (1, 1) and a.input_layout == "channels_last" for p, a in branch_plan)


def _branch_input(x: Tensor, branch_plan: Sequence[tuple[ConvProblem, Algorithm]]) -> Tensor:
    """``x`` in the compute dtype, laid out for the branch convolutions.

    In inference it is converted to channels-last in the same pass when a spatial kernel's
    algorithm reads that layout fastest. With autograd the caller's layout is kept: the input
    is saved for backward.
    """
    dtype = compute_dtype(x)
    if not _reads_channels_last(branch_plan):
        return x.to(dtype)
    if x.device.type != "cpu" or x.dtype != dtype or not x.is_contiguous():
        return x.to(dtype, memory_format=torch.channels_last)
    # Image by image as a 2-D (C, H*W) -> (H*W, C) transpose, which torch's CPU copy runs
    # cache-blocked: 3x faster than its generic channels-last copy (2048 channels at 64x128).
    out = torch.empty_like(x, memory_format=torch.channels_last)
    pixels_by_channel = out.permute(0, 2, 3, 1).view(x.shape[0], -1, x.shape[1])
    for image, target in zip(x, pixels_by_channel):
        target.copy_(image.view(x.shape[1], -1).t())
    return out


def _branch_convs(x: Tensor, branches: Sequence[nn.Module], branch_plan) -> list[Tensor]:
    """Each branch's planned convolution (after a separable branch's depthwise part), from one
    shared copy of ``x`` (freed on return)."""
    x_in = _branch_input(x, branch_plan)
    outs = []
    for branch, (problem, algorithm) in zip(branches, branch_plan):
        # A separable branch's depthwise ConvModule runs as it stands: its convolution is
        # mmseg_aspp.Conv2d, which crops the kernel, plans the algorithm and folds the norm.
        source = branch.depthwise_conv(x_in) if hasattr(branch, "depthwise_conv") else x_in
        outs.append(algorithm.run([source], _planned_conv(branch).conv.weight, slice(None), problem))
    return outs


def aspp_features(
    x: Tensor,
    pool_layer: nn.Module,
    branches: Sequence[nn.Module],
    rates: tuple[int, ...],
    bottleneck: nn.Module,
    mode: str = "auto",
) -> Tensor:
    """ASPP output before the classifier: ``bottleneck(cat(pool, branches))``.

    Args:
        x: Feature map (N, C_in, H, W).
        pool_layer: 1x1 ConvModule applied to the globally pooled features.
        branches: One module per rate: a 1x1 ConvModule for rate 1, otherwise a 3x3 dilated
            ConvModule (DeepLabV3) or a depthwise-separable one (DeepLabV3+).
        rates: Atrous rates, aligned with ``branches``.
        bottleneck: 3x3 ConvModule fusing the concatenated branches.
        mode: How algorithms are chosen (``planner.MODES``); ``"reference"`` runs
            mmseg's formula as it stands.
    """
    if mode == "reference" or is_capturing():
        return aspp_features_reference(x, pool_layer, branches, bottleneck)
    height, width = x.shape[2:]
    branch_plan, (last, last_algorithm) = plan(x, branches, rates, bottleneck, mode)
    pooled = pool_layer(F.adaptive_avg_pool2d(x, 1)).flatten(1)
    convs: list[Tensor | None] = _branch_convs(x, branches, branch_plan)

    def normalised() -> Iterator[Tensor]:
        for i, branch in enumerate(branches):
            out, convs[i] = convs[i], None  # nothing else keeps it once normalised
            yield _norm_act(_planned_conv(branch), out)

    weight = bottleneck.conv.weight
    n_pool = pooled.shape[1]
    if last.grad and last_algorithm.name == "dense":
        # A plain convolution trains the bottleneck where weight gradients outweigh the map
        # (small maps; cuDNN): with the image-pool map broadcast into its input, as in mmseg,
        # one convolution yields the whole weight gradient, and no copy of it is assembled.
        pool_map = pooled[:, :, None, None].expand(-1, -1, height, width)
        with_pool = last._replace(in_channels=weight.shape[1])
        return _norm_act(bottleneck, last_algorithm.run([pool_map, *normalised()], weight, slice(None), with_pool))
    branch_weight, branch_channels, pool_weight = weight, slice(n_pool, None), weight[:, :n_pool]
    if last.grad:
        # One split: autograd joins the two parts' gradients with one concatenation, where two
        # slices would each fill a zero gradient of the whole weight and then add them.
        pool_weight, branch_weight = weight.split([n_pool, weight.shape[1] - n_pool], dim=1)
        branch_channels = slice(None)
    out = last_algorithm.run(normalised(), branch_weight, branch_channels, last)
    out = out + _pool_bottleneck_term(pool_weight, pooled, height, width)
    return _norm_act(bottleneck, out)
