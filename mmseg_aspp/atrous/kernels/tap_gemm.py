"""Dilated convolution as one GEMM per tap (one per-channel multiply-add for a depthwise one),
each over only the pixels it reaches.

On small maps oneDNN's direct convolution runs far below GEMM speed and skips
few padding taps; here every tap is a ``(pixels, C_in) @ (C_in, C_out)``
product restricted to the output region whose reads land on the map, summed
into a channels-last output. Autograd differentiates it as it stands.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import buffers
from ..geometry import tap_span


def kernel_offsets(rows: slice, cols: slice, rate: int, kernel_size: int = 3) -> list[tuple[int, int]]:
    """(dy, dx) read offsets of the kept taps of a square kernel, row-major."""
    centre = kernel_size // 2
    return [((r - centre) * rate, (c - centre) * rate) for r in range(rows.start, rows.stop)
            for c in range(cols.start, cols.stop)]


def taps_conv_hwc(x_hwc: Tensor, weight_taps: Tensor, offsets: list[tuple[int, int]]) -> Tensor:
    """Zero-padded, stride-1 convolution in (N, H, W, C) layout.

    Args:
        x_hwc: Input (N, H, W, C_in), contiguous.
        weight_taps: (taps, C_in, C_out), one matrix per offset.
        offsets: (dy, dx) per tap; must include (0, 0).

    Returns:
        (N, H, W, C_out).
    """
    batch, height, width, channels = x_hwc.shape
    centre = offsets.index((0, 0))
    out = (x_hwc.reshape(-1, channels) @ weight_taps[centre]).view(batch, height, width, -1)
    for tap, (dy, dx) in enumerate(offsets):
        y0, y1 = tap_span(height, dy)
        x0, x1 = tap_span(width, dx)
        if tap == centre or y1 <= y0 or x1 <= x0:
            continue
        region = x_hwc[:, y0 + dy : y1 + dy, x0 + dx : x1 + dx].reshape(-1, channels)
        out[:, y0:y1, x0:x1] += (region @ weight_taps[tap]).view(batch, y1 - y0, x1 - x0, -1)
    return out


def depthwise_taps_hwc(x_hwc: Tensor, weight_taps: Tensor, offsets: list[tuple[int, int]]) -> Tensor:
    """Zero-padded, stride-1 depthwise convolution in (N, H, W, C) layout.

    Args:
        x_hwc: Input (N, H, W, C), any strides (a permuted channels-last map is read in place).
        weight_taps: (taps, C), one per-channel scale per offset.
        offsets: (dy, dx) per tap; must include (0, 0).

    Returns:
        (N, H, W, C), contiguous.
    """
    batch, height, width, channels = x_hwc.shape
    centre = offsets.index((0, 0))
    out = buffers.empty((batch, height, width, channels), x_hwc)
    torch.mul(x_hwc, weight_taps[centre], out=out)
    for tap, (dy, dx) in enumerate(offsets):
        y0, y1 = tap_span(height, dy)
        x0, x1 = tap_span(width, dx)
        if tap == centre or y1 <= y0 or x1 <= x0:
            continue
        out[:, y0:y1, x0:x1].addcmul_(x_hwc[:, y0 + dy : y1 + dy, x0 + dx : x1 + dx], weight_taps[tap])
    return out
