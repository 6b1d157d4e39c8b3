"""The interface every exact convolution algorithm of the head implements."""
from __future__ import annotations

from typing import Iterable, NamedTuple

import torch
from torch import Tensor


class ConvProblem(NamedTuple):
    """One bias-free convolution, as much as choosing an algorithm needs.

    The kernel is the ``rows x cols`` crop of the ``kernel_size`` x ``kernel_size`` parameter
    dilated by ``rate``: the taps that read the map at all, with ``padding`` to match (the
    ASPP bottleneck is a full 3x3 at rate 1, padding 1). Only the dense algorithm takes a
    stride above 1, groups, or a kernel other than 1x1 or 3x3.
    """

    batch: int
    in_channels: int
    out_channels: int
    height: int
    width: int
    kernel_size: int
    rows: tuple[int, int]  # kept kernel rows [start, stop) of the parameter
    cols: tuple[int, int]
    padding: tuple[int, int]
    rate: int
    dtype: str
    device: str  # "cpu", "cuda", ...
    grad: bool  # autograd records the call (training)
    deterministic: bool  # torch.use_deterministic_algorithms or cudnn.deterministic
    channels_last: bool = False  # a (cropped) 1x1 kernel's input arrives channels-last (it is read as it comes)
    stride: int = 1
    groups: int = 1

    @property
    def _keeps_size(self) -> bool:
        """Stride 1 and padded so that the map keeps its size."""
        same = all(pad == (self.rate if taps == 3 else 0) for pad, taps in zip(self.padding, self.kernel))
        return self.stride == 1 and self.kernel_size in (1, 3) and same

    @property
    def plain(self) -> bool:
        """One group, a 1x1 or 3x3 kernel that keeps the map size: what most algorithms compute."""
        return self.groups == 1 and self._keeps_size

    @property
    def depthwise(self) -> bool:
        """One channel per group (DeepLabV3+'s separable branches), a 3x3 kernel that keeps the size."""
        return 1 < self.groups == self.in_channels == self.out_channels and self.kernel_size == 3 and self._keeps_size

    @property
    def kernel(self) -> tuple[int, int]:
        return self.rows[1] - self.rows[0], self.cols[1] - self.cols[0]

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def weight_index(self) -> tuple[slice, slice]:
        """The crop of the (O, C, 3, 3) kernel's spatial axes."""
        return slice(*self.rows), slice(*self.cols)


class Algorithm:
    """An exact way to compute ``conv2d(cat(inputs), weight[crop], padding, dilation=rate)``.

    Subclasses set ``name``, may change ``supports`` (by default ``plain`` problems; only the
    dense algorithm takes every problem) and implement ``run``. Inputs come as
    channel pieces (a branch has one; the bottleneck gets each normalised branch in turn, so an
    algorithm may consume and free them one at a time) in any memory layout; ``input_layout``
    says which one the algorithm reads fastest in inference ("channels_last", "contiguous" or
    "any"), so the head can prepare one copy for all branches.
    """

    name = ""
    input_layout = "any"

    def supports(self, problem: ConvProblem) -> bool:
        return problem.plain

    def run(self, inputs: Iterable[Tensor], weight: Tensor, channels: slice, problem: ConvProblem,
            bias: Tensor | None = None) -> Tensor:
        """The convolution's output (N, O, H, W), in any memory layout.

        Args:
            inputs: Channel pieces of the input, each (N, C_i, H, W); together ``problem.in_channels``.
            weight: The (O, C, k, k) parameter; ``weight[:, channels]`` is this convolution's
                part, cropped to ``problem.weight_index``.
            channels: The input-channel slice of ``weight`` the pieces correspond to.
            problem: Shape, crop and context of the call.
            bias: (O,) added to every output pixel, in the same pass where the algorithm can.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


def with_bias(out: Tensor, bias: Tensor | None) -> Tensor:
    """``out`` plus ``bias`` per channel: in place without autograd (the output is the
    algorithm's own), else as a new tensor."""
    if bias is None:
        return out
    bias = bias.to(out.dtype).view(1, -1, 1, 1)
    return out + bias if torch.is_grad_enabled() else out.add_(bias)


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype autocast would run convolutions in (``x.dtype`` without autocast)."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def concatenated(inputs: Iterable[Tensor]) -> Tensor:
    """The pieces as one tensor (no copy for a single piece)."""
    pieces = list(inputs)
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)
