"""ASPP forward that computes only what contributes to the output.

Every step is exact (same parameters, same function up to float summation
order):

* atrous branches drop kernel rows/columns that only read zero padding
  (a branch whose rate reaches the map size becomes 1x3, 3x1 or 1x1);
* partially valid branches run channels-last, where the convolution skips
  taps that fall outside the map, in forward and backward (``conv.py``); on
  small maps, where direct convolution is slow, they and the bottleneck run as
  one GEMM per tap over the pixels that tap reaches (``gemm.py``);
* the image-pool branch is constant over the map, so its share of the 3x3
  bottleneck is a per-pixel sum of at most nine projected vectors instead of
  a convolution over a broadcast map.

When the forward is captured as a graph (ONNX export, ``torch.jit.trace``,
``torch.export``) the plain formula in ``reference.py`` runs instead: the
choices above are made in Python from the map size at run time, so a
captured graph would hard-wire them for the example input's size.
"""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conv import atrous_convs
from .gemm import kernel_offsets, taps_conv_hwc
from .geometry import effective_kernel, valid_tap_fraction
from .reference import aspp_features_reference, is_capturing
from .weights import prepared_weight

# Below this 2-D valid-tap fraction a dilated conv is faster channels-last with
# tap skipping; above it the plain dense convolution wins.
SKIP_TAPS_BELOW = 0.9
# Up to this many output pixels (batch x H x W) per-tap GEMMs beat direct
# convolution in inference; with autograd their region-wise backward does not.
GEMM_MAX_PIXELS = 512

DENSE, SKIP, GEMM = "dense", "skip", "gemm"


class BranchPlan(NamedTuple):
    rows: slice
    cols: slice
    padding: tuple[int, int]
    rate: int
    mode: str  # DENSE: plain conv; SKIP: channels-last tap skipping; GEMM: per-tap GEMMs


@lru_cache(maxsize=256)
def plan_branches(height: int, width: int, rates: tuple[int, ...], gemm: bool) -> tuple[BranchPlan, ...]:
    """How each branch runs at a map size (cached); ``gemm``: small map, no autograd."""
    plans = []
    for rate in rates:
        if rate == 1:
            plans.append(BranchPlan(slice(0, 1), slice(0, 1), (0, 0), 1, DENSE))
            continue
        rows, cols, padding = effective_kernel(height, width, rate)
        is_1x1 = rows.stop - rows.start == 1 and cols.stop - cols.start == 1
        fraction = valid_tap_fraction(height, rate) * valid_tap_fraction(width, rate)
        if is_1x1 or fraction >= SKIP_TAPS_BELOW:
            mode = DENSE
        else:
            mode = GEMM if gemm else SKIP
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


def _branch_convs(x: Tensor, branches: Sequence[nn.Module], plans: Sequence[BranchPlan]) -> list[Tensor]:
    layouts = {DENSE: "contiguous", SKIP: "channels_last", GEMM: "taps"}

    def kernel(i: int) -> Tensor:
        plan = plans[i]
        index = (slice(None), slice(None), plan.rows, plan.cols)
        # With autograd, atrous_convs casts the kernel itself, so only a view is kept for backward.
        dtype = None if plan.mode == SKIP and torch.is_grad_enabled() else x.dtype
        return prepared_weight(branches[i].conv.weight, index, layouts[plan.mode], dtype)

    outs: list[Tensor | None] = [None] * len(plans)
    x_hwc = x.permute(0, 2, 3, 1).contiguous() if any(p.mode == GEMM for p in plans) else None
    for i, plan in enumerate(plans):
        if plan.mode == DENSE:
            outs[i] = F.conv2d(x, kernel(i), None, 1, plan.padding, plan.rate)
        elif plan.mode == GEMM:
            offsets = kernel_offsets(plan.rows, plan.cols, plan.rate)
            outs[i] = taps_conv_hwc(x_hwc, kernel(i), offsets).permute(0, 3, 1, 2)
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
    gemm = batch * height * width <= GEMM_MAX_PIXELS and not torch.is_grad_enabled()
    plans = plan_branches(height, width, rates, gemm)
    pooled = pool_layer(F.adaptive_avg_pool2d(x, 1)).flatten(1)
    # Under autocast, cast the big input once rather than once per branch.
    convs = _branch_convs(x.to(_compute_dtype(x)), branches, plans)
    fused = torch.cat([_norm_act(m, out) for m, out in zip(branches, convs)], dim=1)

    weight = bottleneck.conv.weight
    n_pool = pooled.shape[1]
    branch_part = (slice(None), slice(n_pool, None))
    if gemm:
        taps = prepared_weight(weight, branch_part, "taps", fused.dtype)
        offsets = kernel_offsets(slice(0, 3), slice(0, 3), 1)
        out = taps_conv_hwc(fused.permute(0, 2, 3, 1).contiguous(), taps, offsets).permute(0, 3, 1, 2)
    else:
        dense = prepared_weight(weight, branch_part, "contiguous", fused.dtype)
        out = F.conv2d(fused.contiguous(), dense, None, 1, 1)
    out = out + _pool_bottleneck_term(weight[:, :n_pool], pooled, height, width)
    return _norm_act(bottleneck, out)
