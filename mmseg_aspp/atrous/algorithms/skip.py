"""Channels-last convolution, whose kernels skip the taps that land outside the map."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..kernels.tap_skipping import atrous_convs
from ..weights import prepared_weight
from .base import Algorithm, concatenated, with_bias


class TapSkipping(Algorithm):
    """oneDNN's channels-last forward skips out-of-map taps (its time falls with the valid-tap
    fraction); with autograd the backward skips them too (``atrous_convs``)."""

    name = "skip"
    input_layout = "channels_last"

    def run(self, inputs, weight, channels, problem, bias=None):
        x = concatenated(inputs)
        index = (slice(None), channels, *problem.weight_index)
        if problem.grad:
            # A view of the parameter is what autograd keeps; atrous_convs lays it out and casts it.
            (out,) = atrous_convs(x, [prepared_weight(weight, index, "channels_last")],
                                  [(problem.padding, problem.rate)])
            return with_bias(out, bias)
        kernel = prepared_weight(weight, index, "channels_last", x.dtype)
        bias = None if bias is None else bias.to(kernel.dtype)
        return F.conv2d(x.contiguous(memory_format=torch.channels_last), kernel, bias, 1, problem.padding,
                        problem.rate)
