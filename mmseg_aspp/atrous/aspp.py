"""ASPP forward that computes only what contributes to the output.

Every step is exact (same parameters, same function up to float summation
order):

* atrous branches drop kernel rows/columns that only read zero padding
  (a branch whose rate reaches the map size becomes 1x3, 3x1 or 1x1);
* partially valid branches run channels-last, where the convolution skips
  taps that fall outside the map, in forward and backward (``conv.py``);
* the image-pool branch is constant over the map, so its share of the 3x3
  bottleneck is a per-pixel sum of at most nine projected vectors instead of
  a convolution over a broadcast map.
"""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conv import atrous_convs
from .geometry import effective_kernel, valid_tap_fraction
from .weights import prepared_weight

# Below this 2-D valid-tap fraction a dilated conv is faster channels-last with
# tap skipping; above it the plain dense convolution wins.
SKIP_TAPS_BELOW = 0.9


class BranchPlan(NamedTuple):
    rows: slice
    cols: slice
    padding: tuple[int, int]
    rate: int
    skip_taps: bool


@lru_cache(maxsize=256)
def plan_branches(height: int, width: int, rates: tuple[int, ...]) -> tuple[BranchPlan, ...]:
    """How each branch runs at a given map size (cached: depends on shapes only)."""
    plans = []
    for rate in rates:
        if rate == 1:
            plans.append(BranchPlan(slice(0, 1), slice(0, 1), (0, 0), 1, False))
            continue
        rows, cols, padding = effective_kernel(height, width, rate)
        is_1x1 = rows.stop - rows.start == 1 and cols.stop - cols.start == 1
        fraction = valid_tap_fraction(height, rate) * valid_tap_fraction(width, rate)
        plans.append(BranchPlan(rows, cols, padding, rate, not is_1x1 and fraction < SKIP_TAPS_BELOW))
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
    def kernel(i: int) -> Tensor:
        plan = plans[i]
        index = (slice(None), slice(None), plan.rows, plan.cols)
        return prepared_weight(branches[i].conv.weight, index, plan.skip_taps, x.dtype)

    outs: list[Tensor | None] = [None] * len(plans)
    skipping = [i for i, p in enumerate(plans) if p.skip_taps]
    for i, plan in enumerate(plans):
        if not plan.skip_taps:
            outs[i] = F.conv2d(x, kernel(i), None, 1, plan.padding, plan.rate)
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

    Args:
        x: Feature map (N, C_in, H, W).
        pool_layer: 1x1 ConvModule applied to the globally pooled features.
        branches: One ConvModule per rate (1x1 for rate 1, 3x3 dilated otherwise).
        rates: Atrous rates, aligned with ``branches``.
        bottleneck: 3x3 ConvModule fusing the concatenated branches.
    """
    height, width = x.shape[-2:]
    plans = plan_branches(height, width, rates)
    pooled = pool_layer(F.adaptive_avg_pool2d(x, 1)).flatten(1)
    # Under autocast, cast the big input once rather than once per branch.
    convs = _branch_convs(x.to(_compute_dtype(x)), branches, plans)
    fused = torch.cat([_norm_act(m, out) for m, out in zip(branches, convs)], dim=1)
    fused = fused.contiguous()

    weight = bottleneck.conv.weight
    n_pool = pooled.shape[1]
    branch_part = prepared_weight(weight, (slice(None), slice(n_pool, None)), False, fused.dtype)
    out = F.conv2d(fused, branch_part, None, 1, 1)
    out = out + _pool_bottleneck_term(weight[:, :n_pool], pooled, height, width)
    return _norm_act(bottleneck, out)
