"""Winograd's F(2x2, 3x3) and F(4x4, 3x3) on each phase of the map: 2.25x and 4x fewer multiplications."""
from __future__ import annotations

import torch

from ..weights import prepared_weight
from ..winograd import (F2, F4, winograd_atrous_conv3x3, winograd_atrous_conv3x3_graph,
                        winograd_atrous_conv3x3_trainable, winograd_conv3x3, winograd_input)
from .base import Algorithm, concatenated


class Winograd(Algorithm):
    """A rate-r 3x3 filter only combines pixels of one phase (y mod r, x mod r), on which it is a
    plain 3x3; each phase runs as F(2x2, 3x3). In inference at rate 1 (the bottleneck) the
    channel pieces are written straight into the zero-bordered input and freed, so no
    concatenation is built. With autograd the input gradient runs the same way and the weight
    gradient as one GEMM per tap; autograd keeps only the input, never the transformed tiles."""

    name = "winograd"
    input_layout = "channels_last"
    transform = F2

    def supports(self, problem):
        # Its transforms add and subtract values of similar size: in bf16 the forward's error is
        # ~2.6x a direct convolution's, and the weight gradient's (summed over every tile) was
        # 1.8x mmseg's own bf16 error in a training step, so reduced-precision training keeps
        # the direct algorithms.
        reduced_training = problem.grad and problem.dtype in ("bfloat16", "float16")
        return problem.kernel == (3, 3) and not reduced_training

    def run(self, inputs, weight, channels, problem):
        if problem.grad and not torch.compiler.is_compiling():
            x = concatenated(inputs)
            return winograd_atrous_conv3x3_trainable(x, weight[:, channels], problem.rate)
        if torch.compiler.is_compiling() or problem.rate > 1:
            x = concatenated(inputs)
            kernel = prepared_weight(weight, (slice(None), channels), self.name, x.dtype)
            if torch.compiler.is_compiling():
                return winograd_atrous_conv3x3_graph(x, kernel, problem.rate, self.transform)
            hwc = x.permute(0, 2, 3, 1)
            return winograd_atrous_conv3x3(hwc, kernel, problem.rate, self.transform).permute(0, 3, 1, 2)
        like = weight.new_empty(0, dtype=problem.torch_dtype)
        buffer, interior = winograd_input(problem.batch, problem.in_channels, problem.height, problem.width, like,
                                          self.transform)
        start = 0
        for piece in inputs:
            interior[:, start : start + piece.shape[1]] = piece
            start += piece.shape[1]
        kernel = prepared_weight(weight, (slice(None), channels), self.name, buffer.dtype)
        return winograd_conv3x3(buffer, kernel, problem.height, problem.width, self.transform)


class Winograd4(Winograd):
    """F(4x4, 3x3): 36 products per 16 outputs against F(2x2, 3x3)'s 16 per 4. Its larger
    transform coefficients round about 5x more than a direct convolution in fp32 (1.5e-6
    against 2.7e-7 relative at 2560 -> 512 channels), so it runs only in fp32/float64
    inference; training and reduced precision keep F(2x2, 3x3)."""

    name = "winograd4"
    transform = F4

    def supports(self, problem):
        return problem.kernel == (3, 3) and not problem.grad and problem.dtype in ("float32", "float64")
