"""One GEMM per kept tap, each over exactly the output pixels whose read lands on the map."""
from __future__ import annotations

import torch

from ..gemm import kernel_offsets, taps_conv_hwc
from ..weights import prepared_weight
from .base import Algorithm, concatenated


class PerTapGemm(Algorithm):
    """GEMM speed where direct convolution is slow (small maps, cuDNN's deterministic dilated
    kernels, a 1x1 kernel on an NCHW input) and deterministic on every device; autograd
    differentiates it as written."""

    name = "gemm"
    input_layout = "channels_last"

    def run(self, inputs, weight, channels, problem):
        x = concatenated(inputs)
        kernel = prepared_weight(weight, (slice(None), channels, *problem.weight_index), "taps", x.dtype)
        if problem.kernel == (1, 1):
            # One GEMM straight from the input's layout (an NCHW map is a transposed operand,
            # never copied), written channels-last.
            batch, _, height, width = x.shape
            out = torch.matmul(x.flatten(2).transpose(1, 2), kernel[0])
            return out.view(batch, height, width, -1).permute(0, 3, 1, 2)
        offsets = kernel_offsets(*problem.weight_index, problem.rate, problem.kernel_size)
        return taps_conv_hwc(x.permute(0, 2, 3, 1).contiguous(), kernel, offsets).permute(0, 3, 1, 2)
