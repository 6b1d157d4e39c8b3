"""3x3 convolution (stride 1, padding 1) by Winograd's minimal filtering F(m x m, 3x3).

Each m x m block of output pixels is computed from the (m + 2) x (m + 2) input
tile around it with (m + 2)^2 multiplications per channel pair instead of 9 m^2:
the tile is transformed (``B^T d B``, a few additions), multiplied by the
transformed kernel (``G g G^T``, computed once) and transformed back
(``A^T m A``). Over all tiles the products are (m + 2)^2 GEMMs
(tiles, C_in) x (C_in, C_out), which run at GEMM speed: F(2x2, 3x3) needs 2.25x
fewer multiply-accumulates than a direct convolution, F(4x4, 3x3) 4x fewer.

It is the same linear map as the convolution; only rounding differs. The
transforms add and subtract values of similar size: F(2x2, 3x3) rounds about as
a direct convolution does, F(4x4, 3x3) (larger coefficients) about 5x more in
fp32, so it is used in fp32/float64 inference only (``TileTransform``). The work
is laid out channels-last, so every transform step is a unit-stride elementwise op.

A dilated 3x3 convolution at rate ``r`` only combines pixels of one phase
``(y mod r, x mod r)``; each phase is a small map on which the dilated
convolution is a plain 3x3 one (``winograd_atrous_conv3x3``, the
space-to-batch form in which DeepLab first ran atrous convolution).
"""
from __future__ import annotations

from fractions import Fraction
from typing import Iterator, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import buffers
from ..geometry import phase_groups

# The transformed copies of a tile are the largest buffers: working on this
# many bytes of them at a time keeps memory small and the buffers reusable
# (freed blocks above 32 MB go back to the OS and are page-faulted in anew).
# Larger chunks make larger GEMMs: at 2048 -> 512 channels, 64x128, rate 12,
# F(2x2, 3x3) took 0.58 / 0.54 / 0.51 / 0.49 / 0.52 s with 12 / 16 / 24 / 32 / 48 MB.
CHUNK_BYTES = 32 * 2**20

Matrix = tuple[tuple[float, ...], ...]


class TileTransform(NamedTuple):
    """The matrices of F(m x m, 3x3): ``Y = A^T [(G g G^T) * (B^T d B)] A``."""

    m: int  # outputs per tile side; a tile reads m + 2 inputs per side
    input: Matrix  # B^T, (m + 2) x (m + 2)
    kernel: Matrix  # G, (m + 2) x 3
    output: Matrix  # A^T, m x (m + 2)

    @property
    def n(self) -> int:
        return self.m + 2


def toom_cook(points: Sequence[Fraction]) -> TileTransform:
    """F(m, 3) from m + 1 interpolation points and the point at infinity (Toom-Cook).

    The output transform evaluates powers at the points, the kernel transform divides
    by each point's Lagrange denominator, and the input transform holds the
    coefficients of the polynomials that vanish at every other point.
    """
    m = len(points) - 1

    def polynomial(roots) -> list[Fraction]:  # coefficients, lowest power first, length m + 2
        coefficients = [Fraction(1)]
        for root in roots:
            coefficients = [Fraction(0)] + coefficients
            for i in range(len(coefficients) - 1):
                coefficients[i] -= root * coefficients[i + 1]
        return coefficients + [Fraction(0)] * (m + 2 - len(coefficients))

    def denominator(j: int) -> Fraction:
        product = Fraction(1)
        for other in points[:j] + points[j + 1 :]:
            product *= points[j] - other
        return product

    def as_floats(rows) -> Matrix:
        return tuple(tuple(float(v) for v in row) for row in rows)

    output = [[p**i for p in points] + [int(i == m - 1)] for i in range(m)]
    kernel = [[p**k / denominator(j) for k in range(3)] for j, p in enumerate(points)] + [[0, 0, 1]]
    inputs = [polynomial(points[:j] + points[j + 1 :]) for j in range(len(points))] + [polynomial(points)]
    return TileTransform(m, as_floats(inputs), as_floats(kernel), as_floats(output))


# Lavin and Gray's F(2, 3): the points 0, 1, -1, with the row signs (and so the summation
# order) that every earlier F(2x2, 3x3) result was measured with.
F2 = TileTransform(
    2,
    input=((1.0, 0.0, -1.0, 0.0), (0.0, 1.0, 1.0, 0.0), (0.0, -1.0, 1.0, 0.0), (0.0, 1.0, 0.0, -1.0)),
    kernel=((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0)),
    output=((1.0, 1.0, 1.0, 0.0), (0.0, 1.0, -1.0, -1.0)),
)
# The points 2 and -1/2 (rather than +-2 or +-1/2) round the least: 1.5e-6 against 2.3e-6
# relative error in fp32 at 2560 -> 512 channels, direct convolution 2.7e-7.
F4 = toom_cook([Fraction(0), Fraction(1), Fraction(-1), Fraction(2), Fraction(-1, 2)])


def _tap_matrix(transform: TileTransform, dtype: torch.dtype, device) -> Tensor:
    """``G (.) G`` as an (n^2, 9) matrix: transformed position (a, b) from kernel tap (k, l)."""
    g = torch.tensor(transform.kernel, dtype=dtype, device=device)
    return torch.kron(g, g)


def winograd_kernel(weight: Tensor, transform: TileTransform = F2, rotated: bool = False) -> Tensor:
    """Transformed kernel ``G g G^T`` as n^2 matrices (n^2, C_in, C_out), in float32 or wider.

    One GEMM over the 9 taps (a 512 x 2560 kernel in 89 ms, where an einsum took 178).

    Args:
        weight: 3x3 kernel (C_out, C_in, 3, 3).
        transform: Which F(m x m, 3x3); n = m + 2.
        rotated: Transform the kernel turned by 180 degrees (with ``weight.transpose(0, 1)``,
            the transposed convolution's kernel) without building it.
    """
    weight = weight.to(torch.promote_types(weight.dtype, torch.float32))
    taps = _tap_matrix(transform, weight.dtype, weight.device)
    if rotated:
        taps = taps.flip(1)
    out_ch, in_ch = weight.shape[:2]
    return (taps @ weight.permute(2, 3, 1, 0).reshape(9, in_ch * out_ch)).view(transform.n**2, in_ch, out_ch)


def _combine(row: Sequence[float], views: Sequence[Tensor], out: Tensor) -> None:
    """``out = sum_k row[k] * views[k]``, one elementwise op per nonzero term."""
    terms = sorted(((c, v) for c, v in zip(row, views) if c), key=lambda term: term[0] != 1)
    (c0, v0), rest = terms[0], terms[1:]
    if c0 == 1 and rest:
        c1, v1 = rest.pop(0)
        torch.add(v0, v1, alpha=c1, out=out)
    elif c0 == 1:
        out.copy_(v0)
    else:
        torch.mul(v0, c0, out=out)
    for c, v in rest:
        out.add_(v, alpha=c)


def _transform(matrix: Matrix, views: Sequence[Tensor], out: Tensor) -> None:
    """``matrix`` applied along one axis of every tile: ``out[a] = sum_k matrix[a][k] * views[k]``."""
    for a, row in enumerate(matrix):
        _combine(row, views, out[a])


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


def _input_tiles(padded: Tensor, transform: TileTransform) -> Tensor:
    """``B^T d B`` of every tile of a zero-padded piece (N, m * th + 2, m * tw + 2, C): (n, n, N, th, tw, C)."""
    m, n = transform.m, transform.n
    batch, padded_h, padded_w, channels = padded.shape
    tiles_h, tiles_w = (padded_h - 2) // m, (padded_w - 2) // m
    # Tile (i, j) reads padded rows m*i .. m*i + n - 1 and the same columns.
    rows = buffers.empty((n, batch, tiles_h, padded_w, channels), padded)
    _transform(transform.input, [padded[:, k : k + m * (tiles_h - 1) + 1 : m] for k in range(n)], rows)
    tiles = buffers.empty((n, n, batch, tiles_h, tiles_w, channels), padded)
    for a in range(n):
        _transform(transform.input, [rows[a][:, :, k : k + m * (tiles_w - 1) + 1 : m] for k in range(n)], tiles[a])
    return tiles


def _winograd_tiles(padded: Tensor, kernel: Tensor, transform: TileTransform, out: Tensor) -> None:
    """All tiles of a zero-padded piece (N, m * th + 2, m * tw + 2, C_in) into ``out``.

    ``out`` is (N, th, m, tw, m, C_out): row and column within each tile's m x m block.
    """
    tiles = _input_tiles(padded, transform)
    shape = tiles.shape[:5]
    products = buffers.empty((*shape, kernel.shape[2]), tiles)
    torch.bmm(tiles.view(transform.n**2, -1, tiles.shape[-1]), kernel, out=products.view(transform.n**2, -1, kernel.shape[2]))
    rows = buffers.empty((transform.m, *shape[1:], kernel.shape[2]), products)
    _transform(transform.output, products, rows)
    for i in range(transform.m):
        _transform(transform.output, rows[i], out[:, :, i].movedim(3, 0))


def _grad_tiles(blocks: Tensor, transform: TileTransform) -> Tensor:
    """``A dY A^T`` of every m x m block (N, th, m, tw, m, C) of an output gradient: (n, n, N, th, tw, C)."""
    adjoint = tuple(zip(*transform.output))  # A, the adjoint of the output transform
    n, (batch, tiles_h, _, tiles_w, _, channels) = transform.n, blocks.shape
    rows = buffers.empty((n, batch, tiles_h, tiles_w, transform.m, channels), blocks)
    _transform(adjoint, blocks.unbind(2), rows)
    tiles = buffers.empty((n, n, batch, tiles_h, tiles_w, channels), blocks)
    for a in range(n):
        _transform(adjoint, rows[a].unbind(3), tiles[a])
    return tiles


def _padded_length(length: int, m: int) -> int:
    """Rows (or columns) of a zero-bordered input: whole m-wide tiles plus a border of one."""
    return m * -(-length // m) + 2


def winograd_input(batch: int, channels: int, height: int, width: int, like: Tensor,
                   transform: TileTransform = F2) -> tuple[Tensor, Tensor]:
    """A zero-bordered input buffer for ``winograd_conv3x3`` and its interior to fill.

    Filling the interior piece by piece lets a caller convolve a channel
    concatenation without building it (and free each piece once written).

    Args:
        batch, channels, height, width: Size of the input map.
        like: Tensor whose dtype and device the buffer takes.
        transform: The F(m x m, 3x3) the buffer is for (its tiles are m wide).

    Returns:
        ``(buffer, interior)``: the (N, m * ceil(H/m) + 2, m * ceil(W/m) + 2, C)
        buffer, and a (N, C, H, W) view of its interior.
    """
    m = transform.m
    buffer = buffers.empty((batch, _padded_length(height, m), _padded_length(width, m), channels), like)
    # Only the border (and the rounding up to whole tiles) is cleared; the caller writes the rest.
    buffer[:, 0].zero_()
    buffer[:, height + 1 :].zero_()
    buffer[:, :, 0].zero_()
    buffer[:, :, width + 1 :].zero_()
    return buffer, buffer[:, 1 : height + 1, 1 : width + 1].permute(0, 3, 1, 2)


def winograd_conv3x3(buffer: Tensor, kernel: Tensor, height: int, width: int, transform: TileTransform = F2,
                     max_tiles: int | None = None) -> Tensor:
    """``conv2d(input, weight, padding=1)`` via F(m x m, 3x3), without bias.

    Args:
        buffer: ``winograd_input``'s buffer with the input written to its interior.
        kernel: ``winograd_kernel(weight, transform)`` in the buffer's dtype.
        height, width: Size of the input map.
        transform: Which F(m x m, 3x3).
        max_tiles: Tiles transformed and multiplied at a time; by default as
            many as fit ``CHUNK_BYTES``.

    Returns:
        (N, C_out, H, W) in channels-last memory format.
    """
    m, batch, in_ch = transform.m, buffer.shape[0], buffer.shape[3]
    out_ch = kernel.shape[2]
    tiles_h, tiles_w = -(-height // m), -(-width // m)
    if max_tiles is None:
        max_tiles = max(1, CHUNK_BYTES // (transform.n**2 * max(in_ch, out_ch) * kernel.element_size()))
    out = buffers.empty((batch, tiles_h, m, tiles_w, m, out_ch), buffer)
    for images, tile_rows in _tile_chunks(batch, tiles_h, tiles_w, max_tiles):
        buffer_rows = slice(m * tile_rows.start, m * tile_rows.stop + 2)
        _winograd_tiles(buffer[images, buffer_rows], kernel, transform, out[images, tile_rows])
    return out.view(batch, m * tiles_h, m * tiles_w, out_ch)[:, :height, :width].permute(0, 3, 1, 2)


def _phase_view(hwc: Tensor, rows: tuple[int, int, int], cols: tuple[int, int, int], rate: int) -> Tensor:
    """View ``[n, a, b, i, j, c] = hwc[n, rows[0] + a + rate * i, cols[0] + b + rate * j, c]``.

    ``rows`` and ``cols`` are ``phase_groups`` entries, so every index lies in the map.
    """
    (a0, a1, count_h), (b0, b1, count_w) = rows, cols
    sn, sh, sw, sc = hwc.stride()
    return hwc.as_strided((hwc.shape[0], a1 - a0, b1 - b0, count_h, count_w, hwc.shape[3]),
                          (sn, sh, sw, rate * sh, rate * sw, sc), hwc.storage_offset() + a0 * sh + b0 * sw)


def _phase_passes(x: Tensor, rate: int, transform: TileTransform, others: Sequence[Tensor] = ()) -> Iterator[tuple]:
    """The phases of ``x`` (N, H, W, C) as batches of zero-bordered maps, about ``CHUNK_BYTES`` each.

    Args:
        transform: The F(m x m, 3x3) the buffers are for.

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
            map_elements = _padded_length(height, transform.m) * _padded_length(width, transform.m) * channels
            map_bytes = map_elements * x.element_size()
            step = max(1, CHUNK_BYTES // (batch * col_phases * map_bytes))
            for a in range(0, row_phases, step):
                taken = min(step, row_phases - a)
                buffer, interior = winograd_input(batch * taken * col_phases, channels, height, width, x,
                                                  transform)
                interior.permute(0, 2, 3, 1).view(batch, taken, col_phases, height, width, channels).copy_(
                    src[:, a : a + taken])
                yield buffer, height, width, [_phase_view(t, rows, cols, rate)[:, a : a + taken] for t in others]


def winograd_atrous_conv3x3(x: Tensor, kernel: Tensor, rate: int, transform: TileTransform = F2) -> Tensor:
    """``conv2d(x, weight, padding=rate, dilation=rate)`` via F(m x m, 3x3) on each phase, without bias.

    The phases of equal size are gathered into a batch of small zero-bordered
    maps, about ``CHUNK_BYTES`` of them per pass, so the extra memory stays bounded.

    Args:
        x: Input (N, H, W, C), any strides (a permuted channels-last map is fastest).
        kernel: ``winograd_kernel(weight, transform)`` in ``x``'s dtype.
        rate: Dilation (and padding) of the convolution.
        transform: Which F(m x m, 3x3).

    Returns:
        (N, H, W, C_out).
    """
    out = buffers.empty((*x.shape[:3], kernel.shape[2]), x)
    for buffer, height, width, (dst,) in _phase_passes(x, rate, transform, [out]):
        result = winograd_conv3x3(buffer, kernel, height, width, transform).permute(0, 2, 3, 1)
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
    transformed = None  # (16, O, C), accumulated in float32 or wider
    dtype = torch.promote_types(x.dtype, torch.float32)
    max_tiles = max(1, CHUNK_BYTES // (16 * max(in_ch, out_ch) * x.element_size()))
    for buffer, height, width, (grad_phases,) in _phase_passes(x, rate, F2, [grad]):
        maps = buffer.shape[0]
        tiles_h, tiles_w = (height + 1) // 2, (width + 1) // 2
        # Output positions past the map (rounding up to whole tiles) get a zero gradient.
        blocks = grad.new_zeros(*grad_phases.shape[:3], 2 * tiles_h, 2 * tiles_w, out_ch)
        blocks[..., :height, :width, :] = grad_phases
        blocks = blocks.view(maps, tiles_h, 2, tiles_w, 2, out_ch)
        for images, tile_rows in _tile_chunks(maps, tiles_h, tiles_w, max_tiles):
            buffer_rows = slice(2 * tile_rows.start, 2 * tile_rows.stop + 2)
            tiles = _input_tiles(buffer[images, buffer_rows], F2).view(16, -1, in_ch)
            grad_tiles = _grad_tiles(blocks[images, tile_rows], F2).view(16, -1, out_ch)
            products = grad_tiles.transpose(1, 2).to(dtype), tiles.to(dtype)
            if transformed is None:
                transformed = torch.bmm(*products, out=buffers.empty((16, out_ch, in_ch), x, dtype))
            else:
                transformed.baddbmm_(*products)
    # G^T . G back to the 9 taps: (O C, 16) @ (16, 9) is (O, C, 3, 3) as it lies.
    return (transformed.view(16, -1).t() @ _tap_matrix(F2, dtype, x.device)).view(out_ch, in_ch, 3, 3)


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
            kernel = winograd_kernel(weight.transpose(0, 1), rotated=True).to(grad.dtype)
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


def _transformed(matrix: Matrix, views: Sequence[Tensor], dim: int) -> Tensor:
    """``matrix`` applied along one axis of every tile, stacked at ``dim`` as a new tensor
    (``_transform`` writes into a buffer)."""
    rows = []
    for row in matrix:
        terms = [(c, v) for c, v in zip(row, views) if c]
        total = terms[0][1] * terms[0][0]
        for c, v in terms[1:]:
            total = total + v * c
        rows.append(total)
    return torch.stack(rows, dim=dim)


def winograd_atrous_conv3x3_graph(x: Tensor, kernel: Tensor, rate: int, transform: TileTransform = F2) -> Tensor:
    """The phase-wise F(m x m, 3x3) convolution as whole-tensor ops, for ``torch.compile``.

    No chunks, no ``out=`` views, no strided gathers: the map is zero-padded to whole
    phases and reshaped into one batch of phase maps, whose tiles are transformed with
    strided slices and stacks that a compiler fuses. It is differentiable as written.
    Eager runs keep the chunked form, whose memory stays bounded.

    Args:
        x: Input (N, C, H, W).
        kernel: ``winograd_kernel(weight, transform)`` in ``x``'s dtype.
        rate: Dilation (and padding) of the convolution.
        transform: Which F(m x m, 3x3).

    Returns:
        (N, C_out, H, W).
    """
    m, n = transform.m, transform.n
    batch, channels, height, width = x.shape
    out_ch = kernel.shape[2]
    phase_h, phase_w = -(-height // rate), -(-width // rate)
    tiles_h, tiles_w = -(-phase_h // m), -(-phase_w // m)
    hwc = F.pad(x.permute(0, 2, 3, 1), (0, 0, 0, phase_w * rate - width, 0, phase_h * rate - height))
    phases = hwc.reshape(batch, phase_h, rate, phase_w, rate, channels).permute(0, 2, 4, 1, 3, 5)
    phases = phases.reshape(batch * rate * rate, phase_h, phase_w, channels)
    padded = F.pad(phases, (0, 0, 1, m * tiles_w - phase_w + 1, 1, m * tiles_h - phase_h + 1))
    rows = _transformed(transform.input, [padded[:, k : k + m * (tiles_h - 1) + 1 : m] for k in range(n)], dim=0)
    tiles = _transformed(transform.input, [rows[:, :, :, k : k + m * (tiles_w - 1) + 1 : m] for k in range(n)],
                         dim=1)
    products = torch.bmm(tiles.reshape(n * n, -1, channels), kernel).view(n, n, -1, tiles_h, tiles_w, out_ch)
    half = _transformed(transform.output, products.unbind(1), dim=4)  # over tile columns: (n, maps, th, tw, m, O)
    out = _transformed(transform.output, half.unbind(0), dim=2)  # over tile rows: (maps, th, m, tw, m, O)
    out = out.reshape(-1, m * tiles_h, m * tiles_w, out_ch)[:, :phase_h, :phase_w]
    out = out.reshape(batch, rate, rate, phase_h, phase_w, out_ch).permute(0, 3, 1, 4, 2, 5)
    return out.reshape(batch, phase_h * rate, phase_w * rate, out_ch)[:, :height, :width].permute(0, 3, 1, 2)
