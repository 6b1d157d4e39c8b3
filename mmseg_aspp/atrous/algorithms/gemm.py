"""One GEMM per kept tap, each over exactly the output pixels whose read lands on the map."""
from __future__ import annotations

import torch

from .. import buffers
from ..kernels.tap_gemm import kernel_offsets, pointwise_conv_nchw, taps_conv_hwc
from ..weights import prepared_weight
from .base import Algorithm, concatenated, with_bias


class PerTapGemm(Algorithm):
    """GEMM speed where direct convolution is slow (small maps, cuDNN's deterministic dilated
    kernels, a 1x1 kernel on an NCHW input) and deterministic on every device; autograd
    differentiates it as written."""

    name = "gemm"
    input_layout = "channels_last"

    def run(self, inputs, weight, channels, problem, bias=None):
        x = concatenated(inputs)
        index = (slice(None), channels, *problem.weight_index)
        if problem.kernel == (1, 1) and problem.grad and x.dtype == problem.torch_dtype and x.is_contiguous():
            # Training on an NCHW map: GEMMs per image in both directions, NCHW out.
            return with_bias(pointwise_conv_nchw(x, prepared_weight(weight, index, "contiguous", x.dtype)), bias)
        kernel = prepared_weight(weight, index, "taps", x.dtype)
        if problem.kernel == (1, 1):
            # One GEMM straight from the input's layout (an NCHW map is a transposed operand,
            # never copied), written channels-last, with the bias in the same pass.
            batch, _, height, width = x.shape
            pixels = x.flatten(2).transpose(1, 2)
            matrix = kernel[0].expand(batch, *kernel[0].shape)
            if problem.grad or problem.torch_dtype != x.dtype:
                # Autograd records out= calls only as their own outputs, and autocast ignores them.
                out = torch.bmm(pixels, matrix) if bias is None else torch.baddbmm(bias.to(kernel.dtype), pixels, matrix)
            else:
                out = buffers.empty((batch, height * width, kernel.shape[2]), x, kernel.dtype)
                if bias is None:
                    torch.bmm(pixels, matrix, out=out)
                else:
                    torch.baddbmm(bias.to(kernel.dtype), pixels, matrix, out=out)
            return out.view(batch, height, width, -1).permute(0, 3, 1, 2)
        offsets = kernel_offsets(*problem.weight_index, problem.rate, problem.kernel_size)
        out = taps_conv_hwc(x.permute(0, 2, 3, 1).contiguous(), kernel, offsets).permute(0, 3, 1, 2)
        return with_bias(out, bias)
