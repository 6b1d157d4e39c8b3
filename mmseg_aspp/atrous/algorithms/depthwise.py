"""A depthwise (one channel per group) dilated convolution as one multiply-add per kernel tap."""
from __future__ import annotations

from ..kernels.tap_gemm import depthwise_taps_hwc, kernel_offsets
from ..weights import prepared_weight
from .base import Algorithm, concatenated, with_bias


class DepthwiseTaps(Algorithm):
    """Each kept tap scales the map's channels and adds them in, over exactly the output pixels
    whose read lands on the map, in channels-last layout: at 2048 channels, 64x128, rate 12 this
    took 93 ms where oneDNN's dilated depthwise convolution took 232 (Xeon). Inference only
    (autograd would keep every tap's product)."""

    name = "depthwise"
    input_layout = "channels_last"

    def supports(self, problem):
        return problem.depthwise and not problem.grad

    def run(self, inputs, weight, channels, problem, bias=None):
        x = concatenated(inputs)
        kernel = prepared_weight(weight, (slice(None), slice(None), *problem.weight_index), "taps", x.dtype)
        offsets = kernel_offsets(*problem.weight_index, problem.rate, problem.kernel_size)
        out = depthwise_taps_hwc(x.permute(0, 2, 3, 1), kernel[:, 0], offsets).permute(0, 3, 1, 2)
        return with_bias(out, bias)
