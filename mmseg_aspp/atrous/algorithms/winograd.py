"""Winograd's F(2x2, 3x3) and F(4x4, 3x3) on each phase of the map: 2.25x and 4x fewer multiplications."""
from __future__ import annotations

from itertools import chain
from typing import Iterable

import torch
from torch import Tensor

from ..weights import WINOGRAD_LAYOUTS, prepared_weight
from ..kernels.winograd import (winograd_atrous_conv3x3, winograd_atrous_conv3x3_graph, winograd_atrous_conv3x3_trainable,
                        winograd_conv3x3, winograd_input)
from .base import Algorithm, concatenated, with_bias


def _winograd_inference(pieces: Iterable[Tensor], weight: Tensor, first_channel: int, rate: int, layout: str,
                        dtype: torch.dtype) -> Tensor:
    """The chunked inference convolution of the channel concatenation of ``pieces``.

    Args:
        pieces: Channel pieces of the input, each (N, C_i, H, W), any layout. At rate 1 they
            are written into the zero-bordered input one at a time (no concatenation), so an
            iterator's pieces can be freed as they are used.
        weight: The (O, C, 3, 3) parameter; its channels from ``first_channel`` on are convolved.
        rate: Dilation (and padding).
        layout: ``"winograd"`` for F(2x2, 3x3), ``"winograd4"`` for F(4x4, 3x3).
        dtype: Compute dtype (the pieces are cast as they are read).

    Returns:
        (N, C_out, H, W), channels-last strides (a view into the output tiles).
    """
    transform = WINOGRAD_LAYOUTS[layout]
    kernel = prepared_weight(weight, (slice(None), slice(first_channel, None)), layout, dtype)
    if rate > 1:
        hwc = concatenated(pieces).to(dtype).permute(0, 2, 3, 1)
        return winograd_atrous_conv3x3(hwc, kernel, rate, transform).permute(0, 3, 1, 2)
    pieces = iter(pieces)
    first = next(pieces)
    batch, _, height, width = first.shape
    buffer, interior = winograd_input(batch, weight.shape[1] - first_channel, height, width, kernel, transform)
    pieces = chain([first], pieces)
    del first  # only the piece being written is kept
    start = 0
    for piece in pieces:
        interior[:, start : start + piece.shape[1]] = piece
        start += piece.shape[1]
    return winograd_conv3x3(buffer, kernel, height, width, transform)


@torch.library.custom_op("mmseg_aspp::winograd_inference", mutates_args=())
def winograd_inference(pieces: list[Tensor], weight: Tensor, first_channel: int, rate: int, layout: str,
                       dtype: torch.dtype) -> Tensor:
    """``_winograd_inference`` as an operator opaque to ``torch.compile``, which then runs the
    chunked kernels as eager code does and keeps the transformed kernel between calls (traced
    into whole-tensor ops, and transforming the kernel on every call, it was slower than the
    direct convolution it replaces)."""
    out = _winograd_inference(pieces, weight, first_channel, rate, layout, dtype)
    return out.contiguous(memory_format=torch.channels_last)  # the strides the fake promises


@winograd_inference.register_fake
def _(pieces, weight, first_channel, rate, layout, dtype):
    batch, _, height, width = pieces[0].shape
    out = pieces[0].new_empty(batch, weight.shape[0], height, width, dtype=dtype)
    return out.contiguous(memory_format=torch.channels_last)


class Winograd(Algorithm):
    """A rate-r 3x3 filter only combines pixels of one phase (y mod r, x mod r), on which it is a
    plain 3x3; each phase runs as F(2x2, 3x3). In inference at rate 1 (the bottleneck) the
    channel pieces are written straight into the zero-bordered input, so no concatenation is
    built. With autograd the input gradient runs the same way and the weight gradient as its
    adjoint; autograd keeps only the input, never the transformed tiles."""

    name = "winograd"
    input_layout = "channels_last"

    def supports(self, problem):
        # Its transforms add and subtract values of similar size: in bf16 the forward's error is
        # ~2.6x a direct convolution's, and the weight gradient's (summed over every tile) was
        # 1.8x mmseg's own bf16 error in a training step, so reduced-precision training keeps
        # the direct algorithms.
        reduced_training = problem.grad and problem.dtype in ("bfloat16", "float16")
        return problem.plain and problem.kernel == (3, 3) and not reduced_training

    def run(self, inputs, weight, channels, problem, bias=None):
        return with_bias(self._convolve(inputs, weight, channels, problem), bias)

    def _convolve(self, inputs, weight, channels, problem):
        if not problem.grad:
            args = (weight, channels.indices(weight.shape[1])[0], problem.rate, self.name, problem.torch_dtype)
            if torch.compiler.is_compiling():
                return winograd_inference(list(inputs), *args)
            return _winograd_inference(inputs, *args)
        x = concatenated(inputs)
        if torch.compiler.is_compiling():
            kernel = prepared_weight(weight, (slice(None), channels), self.name, x.dtype)
            return winograd_atrous_conv3x3_graph(x, kernel, problem.rate, WINOGRAD_LAYOUTS[self.name])
        return winograd_atrous_conv3x3_trainable(x, weight[:, channels], problem.rate)


class Winograd4(Winograd):
    """F(4x4, 3x3): 36 products per 16 outputs against F(2x2, 3x3)'s 16 per 4. Its larger
    transform coefficients round about 5x more than a direct convolution in fp32 (1.5e-6
    against 2.7e-7 relative at 2560 -> 512 channels), so it runs only in fp32/float64
    inference; training and reduced precision keep F(2x2, 3x3)."""

    name = "winograd4"

    def supports(self, problem):
        return (problem.plain and problem.kernel == (3, 3) and not problem.grad
                and problem.dtype in ("float32", "float64"))
