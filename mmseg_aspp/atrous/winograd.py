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

A dilated 3x3 convolution at rate ``r`` only combines pixels of one phase
``(y mod r, x mod r)``; each phase is a small map on which the dilated
convolution is a plain 3x3 one (``winograd_atrous_conv3x3``, the
space-to-batch form in which DeepLab first ran atrous convolution).
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .geometry import phase_groups

# The 16 transformed copies of a tile are the largest buffers: working on this
# many bytes of them at a time keeps memory small and the buffers reusable
# (freed blocks above 32 MB go back to the OS and are page-faulted in anew).
CHUNK_BYTES = 16 * 2**20

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


def _tile_chunks(batch: int, tiles_h: int, tiles_w: int, max_tiles: int):
    """``(image slice, tile-row slice)`` pieces of about ``max_tiles`` tiles each.

    Whole images go together while they fit; a larger image is split into
    bands of tile rows (at least one row each).
    """
    per_image = tiles_h * tiles_w
    if per_image <= max_tiles:
        images = max_tiles // per_image
        for n in range(0, batch, images):
            yield slice(n, min(n + images, batch)), slice(0, tiles_h)
        return
    band = max(1, max_tiles // tiles_w)
    for n in range(batch):
        for i in range(0, tiles_h, band):
            yield slice(n, n + 1), slice(i, min(i + band, tiles_h))


def _input_tiles(padded: Tensor) -> Tensor:
    """``B^T d B`` of every tile of a zero-padded piece (N, 2 * th + 2, 2 * tw + 2, C): (4, 4, N, th, tw, C)."""
    batch, padded_h, padded_w, channels = padded.shape
    tiles_h, tiles_w = (padded_h - 2) // 2, (padded_w - 2) // 2
    # Tile (i, j) reads padded rows 2i..2i+3 and columns 2j..2j+3.
    rows = padded.new_empty(4, batch, tiles_h, padded_w, channels)
    _input_transform(*(padded[:, k : k + 2 * tiles_h - 1 : 2] for k in range(4)), out=rows)
    tiles = padded.new_empty(4, 4, batch, tiles_h, tiles_w, channels)
    for a in range(4):
        _input_transform(*(rows[a][:, :, k : k + 2 * tiles_w - 1 : 2] for k in range(4)), out=tiles[a])
    return tiles


def _winograd_tiles(padded: Tensor, kernel: Tensor, out: Tensor) -> None:
    """All tiles of a zero-padded piece (N, 2 * th + 2, 2 * tw + 2, C_in) into ``out``.

    ``out`` is (N, th, 2, tw, 2, C_out): row and column within each tile's 2x2 block.
    """
    tiles = _input_tiles(padded)
    shape = tiles.shape[:5]
    products = torch.bmm(tiles.view(16, -1, tiles.shape[-1]), kernel).view(*shape, kernel.shape[2])
    half = products.new_empty(2, *shape[1:], kernel.shape[2])
    _output_transform(*products, half[0], half[1])
    for i in range(2):
        _output_transform(*half[i], out[:, :, i, :, 0], out[:, :, i, :, 1])


def _grad_transform(g0: Tensor, g1: Tensor, out: Tensor) -> None:
    """``A g`` along one axis, the adjoint of the output transform: 2 values to 4."""
    out[0].copy_(g0)
    torch.add(g0, g1, out=out[1])
    torch.sub(g0, g1, out=out[2])
    torch.neg(g1, out=out[3])


def _grad_tiles(blocks: Tensor) -> Tensor:
    """``A dY A^T`` of every 2x2 block (N, th, 2, tw, 2, C) of an output gradient: (4, 4, N, th, tw, C)."""
    rows = blocks.new_empty(4, *blocks.shape[:2], *blocks.shape[3:])
    _grad_transform(blocks[:, :, 0], blocks[:, :, 1], rows)
    tiles = blocks.new_empty(4, 4, blocks.shape[0], blocks.shape[1], blocks.shape[3], blocks.shape[5])
    for a in range(4):
        _grad_transform(rows[a][:, :, :, 0], rows[a][:, :, :, 1], tiles[a])
    return tiles


def _padded_length(length: int) -> int:
    """Rows (or columns) of a zero-bordered input: whole 2-wide tiles plus a border of one."""
    return 2 * ((length + 1) // 2) + 2


def winograd_input(batch: int, channels: int, height: int, width: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """A zero-bordered input buffer for ``winograd_conv3x3`` and its interior to fill.

    Filling the interior piece by piece lets a caller convolve a channel
    concatenation without building it (and free each piece once written).

    Args:
        batch, channels, height, width: Size of the input map.
        like: Tensor whose dtype and device the buffer takes.

    Returns:
        ``(buffer, interior)``: the (N, 2 * ceil(H/2) + 2, 2 * ceil(W/2) + 2, C)
        buffer, and a (N, C, H, W) view of its interior.
    """
    buffer = like.new_empty(batch, _padded_length(height), _padded_length(width), channels)
    # Only the border (and the rounding up to whole tiles) is cleared; the caller writes the rest.
    buffer[:, 0].zero_()
    buffer[:, height + 1 :].zero_()
    buffer[:, :, 0].zero_()
    buffer[:, :, width + 1 :].zero_()
    return buffer, buffer[:, 1 : height + 1, 1 : width + 1].permute(0, 3, 1, 2)


def winograd_conv3x3(buffer: Tensor, kernel: Tensor, height: int, width: int,
                     max_tiles: int | None = None) -> Tensor:
    """``conv2d(input, weight, padding=1)`` via F(2x2, 3x3), without bias.

    Args:
        buffer: ``winograd_input``'s buffer with the input written to its interior.
        kernel: ``winograd_kernel(weight)`` in the buffer's dtype.
        height, width: Size of the input map.
        max_tiles: Tiles transformed and multiplied at a time; by default as
            many as fit ``CHUNK_BYTES``.

    Returns:
        (N, C_out, H, W) in channels-last memory format.
    """
    batch, in_ch = buffer.shape[0], buffer.shape[3]
    out_ch = kernel.shape[2]
    tiles_h, tiles_w = (height + 1) // 2, (width + 1) // 2
    if max_tiles is None:
        max_tiles = max(1, CHUNK_BYTES // (16 * max(in_ch, out_ch) * kernel.element_size()))
    out = buffer.new_empty(batch, tiles_h, 2, tiles_w, 2, out_ch)
    for images, tile_rows in _tile_chunks(batch, tiles_h, tiles_w, max_tiles):
        buffer_rows = slice(2 * tile_rows.start, 2 * tile_rows.stop + 2)
        _winograd_tiles(buffer[images, buffer_rows], kernel, out[images, tile_rows])
    return out.view(batch, 2 * tiles_h, 2 * tiles_w, out_ch)[:, :height, :width].permute(0, 3, 1, 2)


def _phase_view(hwc: Tensor, rows: tuple[int, int, int], cols: tuple[int, int, int], rate: int) -> Tensor:
    """View ``[n, a, b, i, j, c] = hwc[n, rows[0] + a + rate * i, cols[0] + b + rate * j, c]``.

    ``rows`` and ``cols`` are ``phase_groups`` entries, so every index lies in the map.
    """
    (a0, a1, count_h), (b0, b1, count_w) = rows, cols
    sn, sh, sw, sc = hwc.stride()
    return hwc.as_strided((hwc.shape[0], a1 - a0, b1 - b0, count_h, count_w, hwc.shape[3]),
                          (sn, sh, sw, rate * sh, rate * sw, sc), hwc.storage_offset() + a0 * sh + b0 * sw)


def _phase_passes(x: Tensor, rate: int, others: Sequence[Tensor] = ()) -> Iterator[tuple]:
    """The phases of ``x`` (N, H, W, C) as batches of zero-bordered maps, about ``CHUNK_BYTES`` each.

    Yields:
        ``(buffer, height, width, views)``: a ``winograd_input`` buffer holding the pass's
        phase maps of that size, and for each tensor in ``others`` (N, H, W, *) the view of
        the same phases, shaped (N, row phases, column phases, height, width, *).
    """
    batch, full_height, full_width, channels = x.shape
    for rows in phase_groups(full_height, rate):
        for cols in phase_groups(full_width, rate):
            src = _phase_view(x, rows, cols, rate)
            row_phases, col_phases, height, width = src.shape[1:5]
            # Row phases per pass: as many as keep the zero-bordered maps within CHUNK_BYTES.
            map_bytes = _padded_length(height) * _padded_length(width) * channels * x.element_size()
            step = max(1, CHUNK_BYTES // (batch * col_phases * map_bytes))
            for a in range(0, row_phases, step):
                taken = min(step, row_phases - a)
                buffer, interior = winograd_input(batch * taken * col_phases, channels, height, width, x)
                interior.permute(0, 2, 3, 1).view(batch, taken, col_phases, height, width, channels).copy_(
                    src[:, a : a + taken])
                yield buffer, height, width, [_phase_view(t, rows, cols, rate)[:, a : a + taken] for t in others]


def winograd_atrous_conv3x3(x: Tensor, kernel: Tensor, rate: int) -> Tensor:
    """``conv2d(x, weight, padding=rate, dilation=rate)`` via F(2x2, 3x3) on each phase, without bias.

    The phases of equal size are gathered into a batch of small zero-bordered
    maps, about ``CHUNK_BYTES`` of them per pass, so the extra memory stays bounded.

    Args:
        x: Input (N, H, W, C), any strides (a permuted channels-last map is fastest).
        kernel: ``winograd_kernel(weight)`` in ``x``'s dtype.
        rate: Dilation (and padding) of the convolution.

    Returns:
        (N, H, W, C_out).
    """
    out = x.new_empty(*x.shape[:3], kernel.shape[2])
    for buffer, height, width, (dst,) in _phase_passes(x, rate, [out]):
        result = winograd_conv3x3(buffer, kernel, height, width).permute(0, 2, 3, 1)
        dst.copy_(result.view(dst.shape))
    return out


def winograd_atrous_weight_grad(x: Tensor, grad: Tensor, rate: int) -> Tensor:
    """Gradient of ``conv2d(x, w, padding=rate, dilation=rate)``'s 3x3 kernel, by Winograd.

    F(2x2, 3x3) is linear in the kernel, so its adjoint gives the weight gradient: for
    each of the 16 transformed positions, a GEMM of the transformed output gradient
    (``A dY A^T``) with the transformed input tiles (``B^T d B``), summed over all tiles,
    then ``G^T . G`` back to 3x3: 2.25x fewer multiplications than one GEMM per tap.

    Args:
        x: Input (N, H, W, C), any strides.
        grad: Output gradient (N, H, W, O), any strides, in ``x``'s dtype.
        rate: Dilation (and padding) of the convolution.

    Returns:
        (O, C, 3, 3), accumulated in float32 or wider.
    """
    in_ch, out_ch = x.shape[3], grad.shape[3]
    transformed = x.new_zeros(16, out_ch, in_ch, dtype=torch.promote_types(x.dtype, torch.float32))
    max_tiles = max(1, CHUNK_BYTES // (16 * max(in_ch, out_ch) * x.element_size()))
    for buffer, height, width, (grad_phases,) in _phase_passes(x, rate, [grad]):
        maps = buffer.shape[0]
        tiles_h, tiles_w = (height + 1) // 2, (width + 1) // 2
        # Output positions past the map (rounding up to whole tiles) get a zero gradient.
        blocks = grad.new_zeros(*grad_phases.shape[:3], 2 * tiles_h, 2 * tiles_w, out_ch)
        blocks[..., :height, :width, :] = grad_phases
        blocks = blocks.view(maps, tiles_h, 2, tiles_w, 2, out_ch)
        for images, tile_rows in _tile_chunks(maps, tiles_h, tiles_w, max_tiles):
            buffer_rows = slice(2 * tile_rows.start, 2 * tile_rows.stop + 2)
            tiles = _input_tiles(buffer[images, buffer_rows]).view(16, -1, in_ch)
            grad_tiles = _grad_tiles(blocks[images, tile_rows]).view(16, -1, out_ch)
            transformed.baddbmm_(grad_tiles.transpose(1, 2).to(transformed.dtype), tiles.to(transformed.dtype))
    g = torch.tensor(_G, dtype=transformed.dtype, device=x.device)
    return torch.einsum("ak,aboc,bl->ockl", g, transformed.view(4, 4, out_ch, in_ch), g)


class _WinogradAtrousConv(torch.autograd.Function):
    """Forward, input gradient and weight gradient as phase-wise Winograd; only the input and
    the weight are kept for backward, as for a plain convolution."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, rate: int) -> Tensor:
        ctx.rate = rate
        ctx.save_for_backward(x, weight)
        kernel = winograd_kernel(weight).to(x.dtype)
        return winograd_atrous_conv3x3(x.permute(0, 2, 3, 1), kernel, rate).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        rate = ctx.rate
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            # The transposed convolution of a "same" conv: the flipped, transposed kernel.
            kernel = winograd_kernel(weight.transpose(0, 1).flip(2, 3)).to(grad.dtype)
            grad_hwc = grad.permute(0, 2, 3, 1)
            grad_x = winograd_atrous_conv3x3(grad_hwc, kernel, rate).permute(0, 3, 1, 2).to(x.dtype)
        if ctx.needs_input_grad[1]:
            grad_weight = winograd_atrous_weight_grad(x.to(grad.dtype).permute(0, 2, 3, 1), grad.permute(0, 2, 3, 1),
                                                      rate).to(weight.dtype)
        return grad_x, grad_weight, None


def winograd_atrous_conv3x3_trainable(x: Tensor, weight: Tensor, rate: int) -> Tensor:
    """``conv2d(x, weight, padding=rate, dilation=rate)`` without bias, differentiable.

    Args:
        x: Input (N, C, H, W), NCHW or channels-last.
        weight: 3x3 kernel (O, C, 3, 3); cast to ``x``'s dtype for the computation.
        rate: Dilation (and padding); 1 for a plain 3x3 convolution.

    Returns:
        (N, O, H, W) in channels-last memory format.
    """
    return _WinogradAtrousConv.apply(x, weight, rate)


def _input_transformed(d0: Tensor, d1: Tensor, d2: Tensor, d3: Tensor, dim: int) -> Tensor:
    """``B^T d`` along one axis as a new tensor (``_input_transform`` writes into a buffer)."""
    return torch.stack((d0 - d2, d1 + d2, d2 - d1, d1 - d3), dim=dim)


def _output_transformed(m0: Tensor, m1: Tensor, m2: Tensor, m3: Tensor, dim: int) -> Tensor:
    """``A^T m`` along one axis as a new tensor."""
    return torch.stack((m0 + m1 + m2, m1 - m2 - m3), dim=dim)


def winograd_atrous_conv3x3_graph(x: Tensor, kernel: Tensor, rate: int) -> Tensor:
    """The phase-wise F(2x2, 3x3) convolution as whole-tensor ops, for ``torch.compile``.

    No chunks, no ``out=`` views, no strided gathers: the map is zero-padded to whole
    phases and reshaped into one batch of phase maps, whose tiles are transformed with
    strided slices and stacks that a compiler fuses. It is differentiable as written.
    Eager runs keep the chunked form, whose memory stays bounded.

    Args:
        x: Input (N, C, H, W).
        kernel: ``winograd_kernel(weight)`` in ``x``'s dtype.
        rate: Dilation (and padding) of the convolution.

    Returns:
        (N, C_out, H, W).
    """
    batch, channels, height, width = x.shape
    out_ch = kernel.shape[2]
    phase_h, phase_w = -(-height // rate), -(-width // rate)
    tiles_h, tiles_w = (phase_h + 1) // 2, (phase_w + 1) // 2
    hwc = F.pad(x.permute(0, 2, 3, 1), (0, 0, 0, phase_w * rate - width, 0, phase_h * rate - height))
    phases = hwc.reshape(batch, phase_h, rate, phase_w, rate, channels).permute(0, 2, 4, 1, 3, 5)
    phases = phases.reshape(batch * rate * rate, phase_h, phase_w, channels)
    padded = F.pad(phases, (0, 0, 1, 2 * tiles_w - phase_w + 1, 1, 2 * tiles_h - phase_h + 1))
    rows = _input_transformed(*(padded[:, k : k + 2 * tiles_h - 1 : 2] for k in range(4)), dim=0)
    tiles = _input_transformed(*(rows[:, :, :, k : k + 2 * tiles_w - 1 : 2] for k in range(4)), dim=1)
    products = torch.bmm(tiles.reshape(16, -1, channels), kernel).view(4, 4, -1, tiles_h, tiles_w, out_ch)
    half = _output_transformed(*products.unbind(1), dim=4)  # over tile columns: (4, maps, th, tw, 2, O)
    out = _output_transformed(*half.unbind(0), dim=2)  # over tile rows: (maps, th, 2, tw, 2, O)
    out = out.reshape(-1, 2 * tiles_h, 2 * tiles_w, out_ch)[:, :phase_h, :phase_w]
    out = out.reshape(batch, rate, rate, phase_h, phase_w, out_ch).permute(0, 3, 1, 4, 2, 5)
    return out.reshape(batch, phase_h * rate, phase_w * rate, out_ch)[:, :height, :width].permute(0, 3, 1, 2)
