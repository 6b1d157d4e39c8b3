"""ASPP forward that computes only what contributes to the output.

Every trick here is exact (same parameters, same function up to float
summation order):

* atrous branches drop kernel rows/columns that only read zero padding
  (a branch whose rate reaches the map size becomes 1x3, 3x1 or 1x1);
* partially valid branches run channels-last, where oneDNN skips the taps
  that fall outside the map;
* the image-pool branch is constant over the map, so its share of the 3x3
  bottleneck is a per-pixel sum of at most nine projected vectors instead of
  a convolution over a broadcast map.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .geometry import effective_kernel, valid_tap_fraction

# Below this 2-D valid-tap fraction a dilated conv runs faster channels-last on
# CPU (oneDNN skips out-of-map taps there but is slower on fully dense convs).
_CHANNELS_LAST_BELOW = 0.9


@lru_cache(maxsize=256)
def _branch_plan(height: int, width: int, rates: tuple[int, ...]):
    plan = []
    for rate in rates:
        if rate == 1:
            plan.append((None, None, 0, 1, False))
            continue
        rows, cols, padding = effective_kernel(height, width, rate)
        fraction = valid_tap_fraction(height, rate) * valid_tap_fraction(width, rate)
        kernel_is_1x1 = rows.stop - rows.start == 1 and cols.stop - cols.start == 1
        channels_last = not kernel_is_1x1 and fraction < _CHANNELS_LAST_BELOW
        plan.append((rows, cols, padding, rate, channels_last))
    return tuple(plan)


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
    if layer.with_norm:
        out = layer.norm(out)
    if layer.with_activation:
        out = layer.activate(out)
    return out


def _branch(layer: nn.Module, x: Tensor, x_cl: Tensor | None, step) -> Tensor:
    rows, cols, padding, rate, channels_last = step
    weight = layer.conv.weight
    if rows is not None:
        weight = weight[:, :, rows, cols]
    out = F.conv2d(x_cl if channels_last else x, weight, layer.conv.bias, 1, padding, rate)
    return _norm_act(layer, out)


def _pool_bottleneck_term(weight: Tensor, pooled: Tensor, height: int, width: int) -> Tensor:
    """Bottleneck-conv contribution of a spatially constant input map.

    Args:
        weight: (C_out, C_pool, 3, 3) slice of the bottleneck weight.
        pooled: (N, C_pool) image-pool features.
    """
    per_tap = torch.einsum("oikl,ni->nokl", weight, pooled)
    row_mask, col_mask = _border_masks(height, width, pooled.device, pooled.dtype)
    return torch.einsum("nokl,ky,lx->noyx", per_tap, row_mask, col_mask)


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
    plan = _branch_plan(height, width, rates)
    x_cl = (
        x.contiguous(memory_format=torch.channels_last)
        if any(step[4] for step in plan)
        else None
    )
    pooled = pool_layer(F.adaptive_avg_pool2d(x, 1)).flatten(1)
    fused = torch.cat([_branch(m, x, x_cl, s) for m, s in zip(branches, plan)], dim=1)
    fused = fused.contiguous()

    weight = bottleneck.conv.weight
    n_pool = pooled.shape[1]
    out = F.conv2d(fused, weight[:, n_pool:], bottleneck.conv.bias, 1, 1)
    out = out + _pool_bottleneck_term(weight[:, :n_pool], pooled, height, width)
    return _norm_act(bottleneck, out)
