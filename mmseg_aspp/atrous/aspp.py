"""ASPP forward that computes only what contributes to the output.

Every step is exact (same parameters, same function up to float rounding):

* atrous branches drop kernel rows/columns that only read zero padding
  (a branch whose rate reaches the map size becomes 1x3, 3x1 or 1x1);
* partially valid branches run channels-last, where the convolution skips
  taps that fall outside the map, in forward and backward (``conv.py``); in
  inference on small maps, where direct convolution is slow, they run as one
  GEMM per tap over the pixels that tap reaches (``gemm.py``), and on maps
  large for their rate as Winograd F(2x2, 3x3) on each phase of the map
  (``winograd.py``), when that needs clearly fewer multiplications than the
  taps that read the map;
* the image-pool branch is constant over the map, so its share of the 3x3
  bottleneck is a per-pixel sum of at most nine projected vectors instead of
  a convolution over a broadcast map;
* in inference the rest of the bottleneck runs as Winograd F(2x2, 3x3)
  (``winograd.py``): 2.25x fewer multiplications; each normalised branch is
  written straight into its padded input and freed, so no concatenation is
  built; the branches share one channels-last copy of the input, made in the
  same pass as the cast to the compute dtype.

When the forward is captured as a graph (ONNX export, ``torch.jit.trace``,
``torch.export``) the plain formula in ``reference.py`` runs instead: the
choices above are made in Python from the map size at run time, so a
captured graph would hard-wire them for the example input's size.
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache
from typing import Iterator, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conv import atrous_convs
from .gemm import kernel_offsets, taps_conv_hwc
from .geometry import effective_kernel, phase_groups, valid_tap_fraction
from .reference import aspp_features_reference, is_capturing
from .weights import prepared_weight
from .winograd import winograd_atrous_conv3x3, winograd_conv3x3, winograd_input

# Below this 2-D valid-tap fraction a dilated conv is faster channels-last with
# tap skipping; above it the plain dense (NCHW) convolution wins or ties.
# Measured: at 128x256 rate 12 (0.91) channels-last takes 0.70x (bf16) and
# 0.77x (fp32) of NCHW's time; at 64x128 rate 6 (0.91) 1.1x and 1.0x.
SKIP_TAPS_BELOW = 0.92
# Up to this many output pixels (batch x H x W) per-tap GEMMs beat direct
# convolution in inference; with autograd their region-wise backward does not.
GEMM_MAX_PIXELS = 512
# In inference a full 3x3 branch runs as Winograd when that takes at most this
# share of the multiplications of its valid taps. Measured at 2048 -> 512
# channels against channels-last tap skipping: at shares of 0.76 and 0.65 it
# was 1.13x and 1.23x faster (128x256, rates 36 and 24), at 0.95 1.11x slower
# (64x128, rate 24).
WINOGRAD_BELOW = 0.8

DENSE, SKIP, GEMM, WINOGRAD = "dense", "skip", "gemm", "winograd"


class BranchPlan(NamedTuple):
    rows: slice
    cols: slice
    padding: tuple[int, int]
    rate: int
    mode: str  # DENSE: plain conv; SKIP: channels-last tap skipping; GEMM: per-tap GEMMs;
    # WINOGRAD: F(2x2, 3x3) per phase


def winograd_share(height: int, width: int, rate: int) -> float:
    """Multiplications of a phase-wise Winograd 3x3 conv over those of its valid taps."""

    def tiles(length: int) -> int:  # 2-wide tiles along an axis, over all phases
        return sum((end - first) * ((count + 1) // 2) for first, end, count in phase_groups(length, rate))

    valid = 9 * height * width * valid_tap_fraction(height, rate) * valid_tap_fraction(width, rate)
    return 16 * tiles(height) * tiles(width) / valid


_forced_mode: str | None = None


@contextmanager
def forced_branch_mode(mode: str | None) -> Iterator[None]:
    """Run every atrous branch that can take it as ``mode`` (tests prove each path this way).

    Winograd applies only to full 3x3 kernels in inference; branches it cannot
    take keep their usual plan. ``None`` restores the usual plans.
    """
    global _forced_mode
    if mode not in (None, DENSE, SKIP, GEMM, WINOGRAD):
        raise ValueError(f"unknown branch mode {mode!r}; use one of {DENSE!r}, {SKIP!r}, {GEMM!r}, {WINOGRAD!r}")
    previous, _forced_mode = _forced_mode, mode
    try:
        yield
    finally:
        _forced_mode = previous


@lru_cache(maxsize=256)
def plan_branches(height: int, width: int, rates: tuple[int, ...], batch: int,
                  inference: bool, forced: str | None = None) -> tuple[BranchPlan, ...]:
    """How each branch runs at a map size (cached); ``inference``: autograd is off."""
    small = batch * height * width <= GEMM_MAX_PIXELS
    plans = []
    for rate in rates:
        if rate == 1:
            plans.append(BranchPlan(slice(0, 1), slice(0, 1), (0, 0), 1, DENSE))
            continue
        rows, cols, padding = effective_kernel(height, width, rate)
        is_1x1 = rows.stop - rows.start == 1 and cols.stop - cols.start == 1
        is_3x3 = rows.stop - rows.start == 3 and cols.stop - cols.start == 3
        fraction = valid_tap_fraction(height, rate) * valid_tap_fraction(width, rate)
        if forced is not None and (forced != WINOGRAD or (inference and is_3x3)):
            mode = forced
        elif is_1x1:
            mode = DENSE
        elif inference and is_3x3 and not small and winograd_share(height, width, rate) <= WINOGRAD_BELOW:
            mode = WINOGRAD
        elif fraction >= SKIP_TAPS_BELOW:
            mode = DENSE
        else:
            mode = GEMM if inference and small else SKIP
        plans.append(BranchPlan(rows, cols, padding, rate, mode))
    return tuple(plans)


@lru_cache(maxsize=256)
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


def _compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype autocast would run convolutions in (``x.dtype`` without autocast)."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def _branch_input(x: Tensor) -> Tensor:
    """``x`` in the compute dtype, laid out for the branch convolutions.

    In inference it is converted to channels-last in the same pass: the 1x1,
    tap-skipping and per-tap GEMM branches all read that layout. With autograd
    the caller's layout is kept, because the input is saved for backward.
    """
    dtype = _compute_dtype(x)
    if torch.is_grad_enabled():
        return x.to(dtype)
    return x.to(dtype, memory_format=torch.channels_last)


def _branch_convs(x: Tensor, branches: Sequence[nn.Module], plans: Sequence[BranchPlan]) -> list[Tensor]:
    layouts = {DENSE: "contiguous", SKIP: "channels_last", GEMM: "taps", WINOGRAD: "winograd"}

    def kernel(i: int) -> Tensor:
        plan = plans[i]
        index = (slice(None), slice(None), plan.rows, plan.cols)
        # With autograd, atrous_convs casts the kernel itself, so only a view is kept for backward.
        dtype = None if plan.mode == SKIP and torch.is_grad_enabled() else x.dtype
        return prepared_weight(branches[i].conv.weight, index, layouts[plan.mode], dtype)

    outs: list[Tensor | None] = [None] * len(plans)
    for i, plan in enumerate(plans):
        if plan.mode == DENSE:
            weight = kernel(i)
            # Full 3x3 kernels at nearly every tap run faster on NCHW (see SKIP_TAPS_BELOW).
            dense_input = x.contiguous() if weight.shape[-2:] == (3, 3) else x
            outs[i] = F.conv2d(dense_input, weight, None, 1, plan.padding, plan.rate)
        elif plan.mode == GEMM:
            offsets = kernel_offsets(plan.rows, plan.cols, plan.rate)
            outs[i] = taps_conv_hwc(x.permute(0, 2, 3, 1).contiguous(), kernel(i), offsets).permute(0, 3, 1, 2)
        elif plan.mode == WINOGRAD:
            outs[i] = winograd_atrous_conv3x3(x.permute(0, 2, 3, 1), kernel(i), plan.rate).permute(0, 3, 1, 2)
    skipping = [i for i, p in enumerate(plans) if p.mode == SKIP]
    if skipping:
        weights = [kernel(i) for i in skipping]
        geometry = [(plans[i].padding, plans[i].rate) for i in skipping]
        for i, out in zip(skipping, atrous_convs(x, weights, geometry)):
            outs[i] = out
    return outs


def aspp_features(
    x: Tensor,
    pool_layer: nn.Module,
    branches: Sequence[nn.Module],
    rates: tuple[int, ...],
    bottleneck: nn.Module,
) -> Tensor:
    """ASPP output before the classifier: ``bottleneck(cat(pool, branches))``.

    Under graph capture (``reference.is_capturing``: ONNX export, tracing,
    ``torch.export``) this runs ``aspp_features_reference``, mmseg's formula
    with the same parameters, because the fast path picks kernels from the map
    size in Python and an exported graph must hold for every input size.

    Args:
        x: Feature map (N, C_in, H, W).
        pool_layer: 1x1 ConvModule applied to the globally pooled features.
        branches: One ConvModule per rate (1x1 for rate 1, 3x3 dilated otherwise).
        rates: Atrous rates, aligned with ``branches``.
        bottleneck: 3x3 ConvModule fusing the concatenated branches.
    """
    if is_capturing():
        return aspp_features_reference(x, pool_layer, branches, bottleneck)
    batch, _, height, width = x.shape
    plans = plan_branches(height, width, rates, batch, not torch.is_grad_enabled(), _forced_mode)
    pooled = pool_layer(F.adaptive_avg_pool2d(x, 1)).flatten(1)
    convs = _branch_convs(_branch_input(x), branches, plans)

    weight = bottleneck.conv.weight
    n_pool = pooled.shape[1]
    branch_part = (slice(None), slice(n_pool, None))
    if torch.is_grad_enabled():
        # Autograd keeps the convolution's input: the concatenation, in the layout it needs.
        fused = torch.cat([_norm_act(m, out) for m, out in zip(branches, convs)], dim=1).contiguous()
        out = F.conv2d(fused, prepared_weight(weight, branch_part, "contiguous", fused.dtype), None, 1, 1)
    else:
        # Each normalised branch goes straight into the Winograd input; nothing else keeps it.
        buffer, interior = winograd_input(batch, weight.shape[1] - n_pool, height, width, convs[0])
        start = 0
        for i, layer in enumerate(branches):
            normed = _norm_act(layer, convs[i])
            convs[i] = None
            interior[:, start : start + normed.shape[1]] = normed
            start += normed.shape[1]
        kernel = prepared_weight(weight, branch_part, "winograd", buffer.dtype)
        out = winograd_conv3x3(buffer, kernel, height, width)
    out = out + _pool_bottleneck_term(weight[:, :n_pool], pooled, height, width)
    return _norm_act(bottleneck, out)
