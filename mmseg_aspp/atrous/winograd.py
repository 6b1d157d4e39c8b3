"""3x3 convolution (stride 1, padding 1) by Winograd's F(2x2, 3x3) algorithm.

Each 2x2 block of output pixels is computed from the 4x4 input tile around
it with 16 multiplications per channel pair instead of 36: the tile is
transformed (``B^T d B``, additions only), multiplied by the transformed
kernel (``G g G^T``, computed once), and transformed back (``A^T m A``).
Over all tiles the 16 products are 16 GEMMs (tiles, C_in) x (C_in, C_out),
which run at GEMM speed, so the convolution needs 2.25x fewer
multiply-accumulates than a direct one.

It is the same linear map as the convolution; only rounding differs (the
transforms add and subtract a few values of similar size). The work is laid
out channels-last, so every transform step is a unit-stride elementwise op.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

# Kernel transform G (4x3) of F(2, 3); the input and output transforms are written out below.
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def winograd_kernel(weight: Tensor) -> Tensor:
    """Transformed kernel ``G g G^T`` as 16 matrices (16, C_in, C_out), in float32 or wider.

    Args:
        weight: 3x3 kernel (C_out, C_in, 3, 3).
    """
    weight = weight.to(torch.promote_types(weight.dtype, torch.float32))
    g = torch.tensor(_G, dtype=weight.dtype, device=weight.device)
    out_ch, in_ch = weight.shape[:2]
    return torch.einsum("ak,oikl,bl->abio", g, weight, g).reshape(16, in_ch, out_ch)


def _input_transform(d0: Tensor, d1: Tensor, d2: Tensor, d3: Tensor, out: Tensor) -> None:
    """``B^T d`` along one axis, for the four taps of every tile, into ``out[0..3]``."""
    torch.sub(d0, d2, out=out[0])
    torch.add(d1, d2, out=out[1])
    torch.sub(d2, d1, out=out[2])
    torch.sub(d1, d3, out=out[3])


def _output_transform(m0: Tensor, m1: Tensor, m2: Tensor, m3: Tensor, out0: Tensor, out1: Tensor) -> None:
    """``A^T m`` along one axis: the two outputs of every tile."""
    torch.add(m0, m1, out=out0).add_(m2)
    torch.sub(m1, m2, out=out1).sub_(m3)


def winograd_conv3x3(parts: Sequence[Tensor], kernel: Tensor) -> Tensor:
    """``conv2d(cat(parts, dim=1), weight, padding=1)`` via F(2x2, 3x3), without bias.

    Args:
        parts: Inputs (N, C_i, H, W) whose channel concatenation is convolved;
            taking them apart saves building the concatenation.
        kernel: ``winograd_kernel(weight)`` in the inputs' dtype.

    Returns:
        (N, C_out, H, W) in channels-last memory format.
    """
    batch, _, height, width = parts[0].shape
    in_ch, out_ch = kernel.shape[1:]
    tiles_h, tiles_w = (height + 1) // 2, (width + 1) // 2
    # Zero-padded (N, H, W, C) input, rounded up to whole tiles; only the border is cleared.
    padded = kernel.new_empty(batch, 2 * tiles_h + 2, 2 * tiles_w + 2, in_ch)
    padded[:, 0].zero_()
    padded[:, height + 1 :].zero_()
    padded[:, :, 0].zero_()
    padded[:, :, width + 1 :].zero_()
    start = 0
    for part in parts:
        stop = start + part.shape[1]
        padded[:, 1 : height + 1, 1 : width + 1, start:stop] = part.permute(0, 2, 3, 1)
        start = stop

    # Tile (i, j) reads padded rows 2i..2i+3 and columns 2j..2j+3.
    rows = padded.new_empty(4, batch, tiles_h, padded.shape[2], in_ch)
    _input_transform(*(padded[:, k : k + 2 * tiles_h - 1 : 2] for k in range(4)), out=rows)
    tiles = padded.new_empty(4, 4, batch, tiles_h, tiles_w, in_ch)
    for a in range(4):
        _input_transform(*(rows[a][:, :, k : k + 2 * tiles_w - 1 : 2] for k in range(4)), out=tiles[a])

    products = torch.bmm(tiles.view(16, -1, in_ch), kernel).view(4, 4, batch, tiles_h, tiles_w, out_ch)
    half = products.new_empty(2, 4, batch, tiles_h, tiles_w, out_ch)
    _output_transform(*products, half[0], half[1])
    out = products.new_empty(batch, tiles_h, 2, tiles_w, 2, out_ch)
    for i in range(2):
        _output_transform(*half[i], out[:, :, i, :, 0], out[:, :, i, :, 1])
    return out.view(batch, 2 * tiles_h, 2 * tiles_w, out_ch)[:, :height, :width].permute(0, 3, 1, 2)
