"""mmseg's own computation: ``F.conv2d`` with the (cropped) kernel."""
from __future__ import annotations

import torch.nn.functional as F

from ..weights import prepared_weight
from .base import Algorithm, concatenated


class Dense(Algorithm):
    """The plain convolution (cuDNN or oneDNN picks the kernel); always available.

    Full 3x3 kernels run on NCHW, which oneDNN ran as fast as channels-last or faster when
    nearly every tap reads the map; cropped kernels read the input as it comes.
    """

    name = "dense"

    def run(self, inputs, weight, channels, problem):
        x = concatenated(inputs)
        kernel = prepared_weight(weight, (slice(None), channels, *problem.weight_index), "contiguous", x.dtype)
        if problem.kernel == (3, 3):
            x = x.contiguous()
        return F.conv2d(x, kernel, None, 1, problem.padding, problem.rate)
