"""``mmseg_aspp.Conv2d``: ``nn.Conv2d`` on the exact core, for the convolutions mmcv builds.

mmseg's backbones pass ``conv_cfg`` to every convolution they build, so
``backbone=dict(type='ResNetV1c', conv_cfg=dict(type='mmseg_aspp.Conv2d'), ...)`` runs a ResNet-D8
(atrous convolution in cascade) on the same planner and algorithms as the ASPP head, with mmseg's
own backbone class and parameter names.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._pytree import tree_map_only

from ..atrous.algorithms import ConvProblem
from ..atrous.algorithms.base import compute_dtype
from ..atrous.geometry import effective_kernel
from ..atrous.planner import MODES, choose, deterministic_requested, resolve_mode
from ..atrous.reference import is_capturing
from ..atrous.weights import Norm, folded, norm_stamp
from ..registry import MODELS


@MODELS.register_module(name="Conv2d")
class PlannedConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters, ``state_dict`` and arguments) whose forward runs the exact
    algorithm the planner picks for its problem: Winograd for wide 3x3 kernels at any rate,
    GEMMs for 1x1 kernels, kernels cropped to the taps that read the map; strided and grouped
    convolutions run as ``F.conv2d``. Maps come out channels-last where the algorithm writes
    them so, and the next convolution reads them as they come.

    In inference (no autograd), an eval-mode BatchNorm applied straight to the output is folded
    into the weights: the layer notes the norm that followed it and, from the next call on,
    convolves with the folded weight and bias (``atrous.weights.folded``, kept until either
    layer's tensors change), which that norm then returns as they are. Whatever else reads the
    output gets the plain convolution, recomputed if need be (``_ConvOutput``), so the fold is
    exact (up to rounding) whatever follows. Training is never folded.

    Args:
        plan: How the algorithm is chosen, as the heads' ``plan`` (``atrous.planner``).
        *args, **kwargs: ``nn.Conv2d``'s.
    """

    def __init__(self, *args, plan: str = "auto", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if plan not in MODES:
            raise ValueError(f"plan must be one of {', '.join(MODES)}; got {plan!r}")
        self.plan = plan
        self._next_norm: Norm | None = None  # the inference BatchNorm seen after this layer

    def problem(self, x: Tensor) -> ConvProblem | None:
        """The planned problem of ``conv(x)``, or None where ``nn.Conv2d`` runs as it stands
        (graph capture, ``plan='reference'``, shape inference on the meta device, padding modes,
        non-square geometry)."""
        geometry = (self.kernel_size, self.stride, self.padding, self.dilation)
        if (self.plan == "reference" or is_capturing() or x.dim() != 4 or x.device.type == "meta"
                or self.padding_mode != "zeros"
                or isinstance(self.padding, str) or any(a != b for a, b in geometry)):
            return None
        size, stride, rate = self.kernel_size[0], self.stride[0], self.dilation[0]
        batch, _, height, width = x.shape
        rows = cols = (0, size)
        padding = self.padding
        if size == 3 and stride == 1 and padding[0] == rate:
            row_taps, col_taps, padding = effective_kernel(height, width, rate)
            rows, cols = (row_taps.start, row_taps.stop), (col_taps.start, col_taps.stop)
        channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        return ConvProblem(batch, self.in_channels, self.out_channels, height, width, size, rows, cols, padding, rate,
                           str(compute_dtype(x)).removeprefix("torch."), x.device.type, torch.is_grad_enabled(),
                           deterministic_requested(), channels_last, stride, self.groups)

    def forward(self, x: Tensor) -> Tensor:
        problem = self.problem(x)
        if problem is None:
            return super().forward(x)
        if problem.grad or torch.compiler.is_compiling():
            # With autograd, in the layout nn.Conv2d would give: PyTorch's batch statistics of a
            # channels-last map are less accurate (2.3e-4 against 1.5e-5 relative when |mean| is
            # 400 standard deviations), and a BatchNorm in training usually comes next.
            layout = torch.channels_last if problem.channels_last else torch.contiguous_format
            return self.convolve(x, problem).contiguous(memory_format=layout)
        norm = self._next_norm
        return _ConvOutput.of(self.convolve(x, problem, norm), self, x, problem, norm)

    def convolve(self, x: Tensor, problem: ConvProblem, norm: Norm | None = None) -> Tensor:
        """The convolution of ``x``, with the inference BatchNorm ``norm`` folded in if given."""
        weight, bias = (self.weight, self.bias) if norm is None else folded(self.weight, self.bias, norm)
        algorithm = choose(problem, resolve_mode(self.plan, x.device))
        return algorithm.run([x], weight, slice(None), problem, bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, plan={self.plan!r}"


# Tensor functions that read only metadata: they see a folded output as it is.
_METADATA = frozenset({
    Tensor.dim, Tensor.size, Tensor.stride, Tensor.numel, Tensor.is_contiguous, Tensor.element_size,
    Tensor.storage_offset, Tensor.is_floating_point, Tensor.get_device, Tensor.__len__,
    *(getattr(Tensor, name).__get__ for name in ("shape", "dtype", "device", "ndim", "layout", "is_cuda",
                                                 "requires_grad", "grad_fn", "is_sparse", "is_quantized")),
})


class _ConvOutput(Tensor):
    """A planned convolution's output in inference, which knows how it was computed.

    ``F.batch_norm`` in eval mode, applied straight to it, returns it as it is when its layer
    folded that very norm in (by identity and version of its tensors), once; else it teaches the
    layer to fold the norm next time. Every other function sees the plain convolution: the
    values as they are when nothing was folded in, else recomputed from the kept input.
    """

    _layer: PlannedConv2d
    _input: Tensor
    _problem: ConvProblem
    _norm: tuple | None  # norm_stamp of the folded norm
    _spent: bool  # the folded values were handed to their norm (and may since be changed in place)

    @classmethod
    def of(cls, values: Tensor, layer: PlannedConv2d, x: Tensor, problem: ConvProblem, norm: Norm | None) -> Tensor:
        out = values.as_subclass(cls)
        out._layer, out._input, out._problem = layer, x, problem
        out._norm, out._spent = (None if norm is None else norm_stamp(norm)), False
        return out

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.batch_norm and args and type(args[0]) is cls:
            return args[0]._batch_norm(*args[1:], **kwargs)
        if func not in _METADATA:
            args, kwargs = tree_map_only(cls, cls._plain, (args, kwargs))
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)

    def _plain(self) -> Tensor:
        """The plain convolution's values, as a plain tensor."""
        if self._norm is None:
            with torch._C.DisableTorchFunctionSubclass():
                return self.as_subclass(Tensor)
        with torch.no_grad():
            return self._layer.convolve(self._input, self._problem)

    def _batch_norm(self, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                    eps=1e-5) -> Tensor:
        norm = (running_mean, running_var, weight, bias, eps)
        if not training and running_mean is not None and not torch.is_grad_enabled():
            if self._norm is not None and not self._spent and self._norm == norm_stamp(norm):
                self._spent = True
                with torch._C.DisableTorchFunctionSubclass():
                    return self.as_subclass(Tensor)
            self._layer._next_norm = norm
        return F.batch_norm(self._plain(), running_mean, running_var, weight, bias, training, momentum, eps)
