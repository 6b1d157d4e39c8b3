"""mmseg's own computation: ``F.conv2d`` with the (cropped) kernel."""
from __future__ import annotations

import torch.nn.functional as F

from ..weights import prepared_weight
from .base import Algorithm, concatenated


class Dense(Algorithm):
    """The plain convolution (cuDNN or oneDNN picks the kernel); always available.

    Full 3x3 kernels run on NCHW, which oneDNN ran as fast as channels-last or faster when
    nearly every tap reads the map, unless the input is channels-last already (a backbone's
    maps stay so from layer to layer); other kernels read the input as it comes.
    """

    name = "dense"

    def supports(self, problem):
        return True

    def run(self, inputs, weight, channels, problem, bias=None):
        x = concatenated(inputs)
        kernel = prepared_weight(weight, (slice(None), channels, *problem.weight_index), "contiguous", x.dtype)
        if problem.kernel == (3, 3) and not problem.channels_last:
            x = x.contiguous()
        bias = None if bias is None else bias.to(kernel.dtype)
        return F.conv2d(x, kernel, bias, problem.stride, problem.padding, problem.rate, problem.groups)
