"""Dilated convolutions whose forward *and* backward skip out-of-map taps.

oneDNN's channels-last forward convolution already skips taps that read only
padding, but its backward passes do not. Here the backward is rebuilt from
pieces that do:

* input gradient: the transposed convolution equals a forward convolution of
  the output gradient with the flipped, transposed kernel (stride 1, same
  padding), which again runs channels-last and skips the same taps;
* weight gradient: one GEMM per tap over exactly the output region where that
  tap reads the map, taken straight from the NCHW input (see ``_weight_grad``).

Only the input (in its caller's layout) and views of the kernels are saved for
backward; the channels-last copies of both exist only inside one call.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..geometry import tap_span

_CL = torch.channels_last


def _weight_grad(x: Tensor, grad: Tensor, kernel_size: tuple[int, int], padding, rate: int) -> Tensor:
    """Gradient of a dilated conv's kernel, one GEMM per tap that reads the map.

    Args:
        x: Input (N, C, H, W), NCHW-contiguous.
        grad: Output gradient (N, O, H, W), NCHW-contiguous, in ``x``'s dtype.

    Each tap's product runs over flat pixel indices: with ``(dy, dx)`` its read
    offset, output pixel ``p`` reads ``p + dy * W + dx``, so the rows where the
    tap lands form one contiguous range of ``x`` and no region is copied. Reads
    of pixels whose column lies off the map wrap into the neighbouring row;
    their gradient is zeroed (``masked``), so they add nothing.
    """
    batch, in_ch, height, width = x.shape
    out_ch = grad.shape[1]
    pixels = height * width
    x_flat = x.view(batch, in_ch, pixels)
    grad_w = x.new_zeros(out_ch, in_ch, *kernel_size)
    for j in range(kernel_size[1]):
        dx = j * rate - padding[1]
        x0, x1 = tap_span(width, dx)
        if x1 <= x0:
            continue
        masked = grad
        if (x0, x1) != (0, width):
            masked = grad.clone()
            masked[..., :x0] = 0
            masked[..., x1:] = 0
        grad_flat = masked.view(batch, out_ch, pixels)
        for i in range(kernel_size[0]):
            dy = i * rate - padding[0]
            y0, y1 = tap_span(height, dy)
            if y1 <= y0:
                continue
            shift = dy * width + dx
            # Trimming at the ends of the map drops only masked (wrapped) pixels.
            p0, p1 = max(y0 * width, -shift), min(y1 * width, pixels - shift)
            tap = grad_flat[0, :, p0:p1] @ x_flat[0, :, p0 + shift : p1 + shift].t()
            for n in range(1, batch):
                tap.addmm_(grad_flat[n, :, p0:p1], x_flat[n, :, p0 + shift : p1 + shift].t())
            grad_w[:, :, i, j] = tap
    return grad_w


class _AtrousConvs(torch.autograd.Function):
    """Several bias-free dilated convs of one input, channels-last."""

    @staticmethod
    def forward(ctx, x: Tensor, geometry: tuple, *weights: Tensor) -> tuple[Tensor, ...]:
        x_cl = x.contiguous(memory_format=_CL)
        ctx.geometry = geometry
        ctx.save_for_backward(x, *weights)
        return tuple(
            F.conv2d(x_cl, w.to(x.dtype).contiguous(memory_format=_CL), None, 1, padding, rate)
            for w, (padding, rate) in zip(weights, geometry)
        )

    @staticmethod
    def backward(ctx, *grads: Tensor):
        x, *weights = ctx.saved_tensors
        x = x.contiguous()
        grad_x = None
        grad_weights = []
        for grad, weight, (padding, rate) in zip(grads, weights, ctx.geometry):
            if grad is None or not ctx.needs_input_grad[2 + len(grad_weights)]:
                grad_weights.append(None)
            else:
                grad_w = _weight_grad(x.to(grad.dtype), grad.contiguous(), weight.shape[2:], padding, rate)
                grad_weights.append(grad_w.to(weight.dtype))
            if grad is not None and ctx.needs_input_grad[0]:
                # Under autocast the forward ran in grad's dtype.
                flipped = weight.to(grad.dtype).transpose(0, 1).flip(2, 3)
                part = F.conv2d(grad.contiguous(memory_format=_CL), flipped, None, 1, padding, rate)
                grad_x = part if grad_x is None else grad_x.add_(part)
        if grad_x is not None:
            grad_x = grad_x.to(x.dtype)
        return (grad_x, None, *grad_weights)


def atrous_convs(x: Tensor, weights: Sequence[Tensor], geometry: Sequence[tuple]) -> tuple[Tensor, ...]:
    """Bias-free convolutions ``conv2d(x, w, padding=p, dilation=r)`` for each weight.

    Args:
        x: Input (N, C, H, W) in any memory layout.
        weights: Kernels (O, C, kh, kw), already cropped to the taps that read the map,
            in any layout and dtype (they are cast to ``x``'s for the convolution).
            Pass views of the parameters: they are what is kept for backward.
        geometry: ``(padding, rate)`` per kernel.

    Returns:
        One channels-last output per kernel; gradients flow to ``x`` and every kernel.
    """
    return _AtrousConvs.apply(x, tuple(geometry), *weights)
