"""Dilated convolutions whose forward *and* backward skip out-of-map taps.

oneDNN's channels-last forward convolution already skips taps that read only
padding, but its backward passes do not. Here the backward is rebuilt from
pieces that do:

* input gradient: the transposed convolution equals a forward convolution of
  the output gradient with the flipped, transposed kernel (stride 1, same
  padding), which again runs channels-last and skips the same taps;
* weight gradient: one GEMM per tap over exactly the output region where that
  tap reads the map.

The input is saved once in its caller's layout and the channels-last copy is
rebuilt in backward, so training holds no extra copy of the feature map.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .geometry import tap_span

_CL = torch.channels_last


def _weight_grad(x_cl: Tensor, grad_cl: Tensor, weight: Tensor, padding, rate: int) -> Tensor:
    out_ch, in_ch, k_h, k_w = weight.shape
    height, width = x_cl.shape[-2:]
    x_hwc = x_cl.permute(0, 2, 3, 1)
    grad_hwc = grad_cl.permute(0, 2, 3, 1)
    taps = []
    for i in range(k_h):
        dy = i * rate - padding[0]
        y0, y1 = tap_span(height, dy)
        for j in range(k_w):
            dx = j * rate - padding[1]
            x0, x1 = tap_span(width, dx)
            if y1 <= y0 or x1 <= x0:
                taps.append(weight.new_zeros(out_ch, in_ch))
                continue
            grad_region = grad_hwc[:, y0:y1, x0:x1].reshape(-1, out_ch)
            x_region = x_hwc[:, y0 + dy : y1 + dy, x0 + dx : x1 + dx].reshape(-1, in_ch)
            taps.append(grad_region.t() @ x_region)
    return torch.stack(taps, dim=-1).view(out_ch, in_ch, k_h, k_w)


class _AtrousConvs(torch.autograd.Function):
    """Several bias-free dilated convs of one input, channels-last."""

    @staticmethod
    def forward(ctx, x: Tensor, geometry: tuple, *weights: Tensor) -> tuple[Tensor, ...]:
        x_cl = x.contiguous(memory_format=_CL)
        ctx.geometry = geometry
        ctx.save_for_backward(x, *weights)
        return tuple(
            F.conv2d(x_cl, w, None, 1, padding, rate) for w, (padding, rate) in zip(weights, geometry)
        )

    @staticmethod
    def backward(ctx, *grads: Tensor):
        x, *weights = ctx.saved_tensors
        x_cl = x.contiguous(memory_format=_CL)
        grad_x = None
        grad_weights = []
        for grad, weight, (padding, rate) in zip(grads, weights, ctx.geometry):
            if grad is None:
                grad_weights.append(None)
                continue
            grad_cl = grad.contiguous(memory_format=_CL)
            weight = weight.to(grad.dtype)  # under autocast the forward ran in grad's dtype
            if ctx.needs_input_grad[0]:
                flipped = weight.transpose(0, 1).flip(2, 3)
                part = F.conv2d(grad_cl, flipped, None, 1, padding, rate)
                grad_x = part if grad_x is None else grad_x.add_(part)
            grad_weights.append(_weight_grad(x_cl.to(grad.dtype), grad_cl, weight, padding, rate))
        if grad_x is not None:
            grad_x = grad_x.to(x.dtype)
        return (grad_x, None, *(g if g is None else g.to(w.dtype) for g, w in zip(grad_weights, weights)))


def atrous_convs(x: Tensor, weights: Sequence[Tensor], geometry: Sequence[tuple]) -> tuple[Tensor, ...]:
    """Bias-free convolutions ``conv2d(x, w, padding=p, dilation=r)`` for each weight.

    Args:
        x: Input (N, C, H, W) in any memory layout.
        weights: Kernels (O, C, kh, kw), already cropped to the taps that read the map.
        geometry: ``(padding, rate)`` per kernel.

    Returns:
        One channels-last output per kernel; gradients flow to ``x`` and every kernel.
    """
    return _AtrousConvs.apply(x, tuple(geometry), *weights)
