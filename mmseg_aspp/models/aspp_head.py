"""DeepLabV3 ASPP decode head with mmseg-compatible parameters."""
from __future__ import annotations

import logging
from typing import Literal, Sequence

from mmcv.cnn import ConvModule
from mmengine.logging import print_log
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
import torch
from torch import Tensor, nn

from ..atrous import aspp_features
from ..atrous.planner import MODES
from ..atrous.geometry import effective_kernel
from ..atrous.reference import is_capturing
from ..errors import MmsegAsppError
from ..registry import MODELS


class ASPPHeadError(MmsegAsppError, ValueError):
    """A bad head argument or input; the message says which and how to fix it."""


class ASPPArgumentError(ASPPHeadError, AssertionError):
    """A bad constructor argument; also an ``AssertionError``, which mmseg's head raises."""


def _check_dilations(dilations: object) -> tuple[int, ...]:
    if not isinstance(dilations, (list, tuple)) or len(dilations) == 0:
        raise ASPPArgumentError(
            f"dilations must be a non-empty list or tuple of positive ints, e.g. "
            f"(1, 12, 24, 36); got {dilations!r}"
        )
    bad = [d for d in dilations if isinstance(d, bool) or not isinstance(d, int) or d < 1]
    if bad:
        raise ASPPArgumentError(
            f"dilations must be positive ints (1 means the 1x1 branch); "
            f"got {tuple(dilations)!r} with invalid value(s) {bad!r}"
        )
    return tuple(dilations)


def _rates_for_output_stride(rates: tuple[int, ...], output_stride: int | None) -> tuple[int, ...]:
    """Rates given for output stride 16, scaled by ``16 / output_stride`` (1 stays 1)."""
    if output_stride is None:
        return rates
    if output_stride not in (8, 16, 32):
        raise ASPPArgumentError(f"output_stride must be 8, 16 or 32 (or None); got {output_stride!r}")
    scaled = tuple(r if r == 1 else r * 16 / output_stride for r in rates)
    if any(r != int(r) or r < 1 for r in scaled):
        raise ASPPArgumentError(
            f"dilations {rates} (given for output stride 16) do not scale to whole rates at "
            f"output_stride={output_stride}: got {scaled}")
    return tuple(int(r) for r in scaled)


def _degenerate_kernel(height: int, width: int, rate: int) -> str | None:
    """'1x1', '1x3' or '3x1' when a 3x3 at ``rate`` only reads padding off-centre on an axis."""
    rows, cols, _ = effective_kernel(height, width, rate)
    shape = f"{rows.stop - rows.start}x{cols.stop - cols.start}"
    return None if shape == "3x3" else shape


class BatchOfOneError(ASPPHeadError):
    """BatchNorm in training would see one value per channel."""


def _check_channels(name: str, value: object) -> None:
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values or any(
        isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values
    ):
        raise ASPPArgumentError(f"{name} must be a positive int (or a list of them); got {value!r}")


@MODELS.register_module()
class ASPPHead(BaseDecodeHead):
    """Atrous Spatial Pyramid Pooling head of DeepLabV3 (Chen et al., 2017).

    Parameters and ``state_dict`` keys are exactly those of mmseg's ``ASPPHead``
    (``image_pool``, ``aspp_modules``, ``bottleneck``, ``conv_seg``), so published
    mmseg DeepLabV3 checkpoints load unchanged. The forward pass computes the
    same function but skips work that cannot contribute (taps that only read
    zero padding, the image-pool branch's constant map); see ``mmseg_aspp.atrous``.

    Args:
        dilations: Atrous rates, one branch each; a rate of 1 is the 1x1 branch.
        output_stride: If set, ``dilations`` are the rates for output stride 16
            and each rate above 1 is scaled by ``16 / output_stride`` (the
            paper's (6, 12, 18) at OS16 become (12, 24, 36) at OS8). None uses
            ``dilations`` as given, as mmseg does.
        pool_norm_cfg: Norm of the image-pooling branch. ``"norm_cfg"`` (default)
            uses ``norm_cfg``, which published checkpoints need. BatchNorm there
            normalises one pooled vector per image, so training it needs at least
            two images per BN (per GPU, or SyncBN across GPUs); ``None`` (a biased
            conv) or GroupNorm train with any batch size but change the branch's
            parameters, so BN checkpoints no longer load into it strictly.
        plan: How each convolution's algorithm is chosen: ``"auto"`` (measured on CUDA
            when ``cudnn.benchmark`` is on, else by rule), ``"heuristic"``, ``"measure"``
            (time the candidates once per shape) or ``"reference"`` (mmseg's formula);
            see ``mmseg_aspp.atrous.planner``.
        **kwargs: Every argument of mmseg's ``BaseDecodeHead`` (``in_channels``,
            ``channels``, ``num_classes``, ``norm_cfg``, ...).
    """

    def __init__(
        self,
        dilations: Sequence[int] = (1, 6, 12, 18),
        output_stride: int | None = None,
        pool_norm_cfg: dict | None | Literal["norm_cfg"] = "norm_cfg",
        plan: str = "auto",
        **kwargs,
    ) -> None:
        rates = _rates_for_output_stride(_check_dilations(dilations), output_stride)
        if plan not in MODES:
            raise ASPPArgumentError(f"plan must be one of {', '.join(MODES)}; got {plan!r}")
        for name in ("in_channels", "channels"):
            if name in kwargs:
                _check_channels(name, kwargs[name])
        super().__init__(**kwargs)
        if self.conv_cfg not in (None, {"type": "Conv2d"}, {"type": "Conv"}):
            raise ASPPArgumentError(
                f"{type(self).__name__} supports plain convolutions only (conv_cfg=None); got "
                f"conv_cfg={self.conv_cfg!r}"
            )
        self.dilations = rates
        self.output_stride = output_stride
        self.plan = plan
        layer_cfg = dict(conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
        pool_norm = self.norm_cfg if pool_norm_cfg == "norm_cfg" else pool_norm_cfg
        self.image_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            ConvModule(self.in_channels, self.channels, 1, **{**layer_cfg, "norm_cfg": pool_norm}),
        )
        self.aspp_modules = nn.ModuleList(self._atrous_branch(rate) for rate in self.dilations)
        self.bottleneck = ConvModule(
            (len(self.dilations) + 1) * self.channels, self.channels, 3, padding=1, **layer_cfg
        )
        self._seen_sizes: set[tuple[int, int]] = set()
        self._warned: set[tuple[int, str]] = set()

    def _atrous_branch(self, rate: int) -> nn.Module:
        """The branch at ``rate``: a 1x1 ConvModule for rate 1, else a 3x3 dilated one."""
        return ConvModule(self.in_channels, self.channels, 1 if rate == 1 else 3, dilation=rate,
                          padding=0 if rate == 1 else rate, conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg,
                          act_cfg=self.act_cfg)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4:
            raise ASPPHeadError(
                f"{type(self).__name__} expects a 4-D feature map (N, C, H, W); got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ASPPHeadError(
                f"{type(self).__name__} was built with in_channels={self.in_channels} but got a feature "
                f"map with {x.shape[1]} channels (shape {tuple(x.shape)}); set in_channels "
                f"or in_index to match the backbone output"
            )
        if self.training:
            self._check_batch_norm_inputs(x)
        if is_capturing() or torch.compiler.is_compiling():  # sizes may be symbolic; warn in eager
            return
        size = (x.shape[2], x.shape[3])
        if size not in self._seen_sizes:  # once per map size: no per-call cost
            self._seen_sizes.add(size)
            self._warn_degenerate(*size)

    def _check_batch_norm_inputs(self, x: Tensor) -> None:
        batch, _, height, width = x.shape
        if batch == 1 and isinstance(self.image_pool[1].norm, nn.BatchNorm2d):
            raise BatchOfOneError(
                f"{type(self).__name__}: training with 1 image per batch, but the image-pooling branch's "
                "BatchNorm normalises one pooled value per channel, which is undefined. Use at "
                "least 2 images per GPU, SyncBN across GPUs, or pool_norm_cfg=None (or "
                "dict(type='GN', num_groups=32)) in the decode head; either of those changes that "
                "branch's parameters, so BN checkpoints no longer load into it strictly")
        if batch * height * width == 1 and isinstance(self.bottleneck.norm, nn.BatchNorm2d):
            raise BatchOfOneError(
                f"{type(self).__name__}: training on a 1x1 feature map with 1 image: every BatchNorm in the head "
                "sees one value per channel. Use larger crops or at least 2 images per batch")

    def _warn_degenerate(self, height: int, width: int) -> None:
        found = [(rate, _degenerate_kernel(height, width, rate)) for rate in self.dilations if rate > 1]
        new = [(rate, kind) for rate, kind in found if kind and (rate, kind) not in self._warned]
        if not new:
            return
        self._warned.update(new)
        branches = ", ".join(f"rate {rate} as a {kind} conv" for rate, kind in new)
        print_log(
            f"{type(self).__name__}: at a {height}x{width} feature map these branches degenerate ({branches}): "
            f"their other taps only read zero padding (rate >= map size). Larger inputs, output "
            f"stride 8 or smaller rates keep them atrous; tools/analyze_rates.py shows the "
            f"valid-tap fractions.",
            logger="current", level=logging.WARNING)

    def _forward_feature(self, inputs: Sequence[Tensor]) -> Tensor:
        """Fused ASPP features before ``cls_seg``, shape (N, channels, H, W)."""
        x = self._transform_inputs(inputs)
        self._check_input(x)
        return aspp_features(x, self.image_pool[1], self.aspp_modules, self.dilations, self.bottleneck, self.plan)

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        return self.cls_seg(self._forward_feature(inputs))
