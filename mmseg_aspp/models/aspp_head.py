"""DeepLabV3 ASPP decode head with mmseg-compatible parameters."""
from __future__ import annotations

from typing import Sequence

import torch
from mmcv.cnn import ConvModule
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from torch import Tensor, nn

from ..atrous import aspp_features
from ..registry import MODELS


def _check_dilations(dilations: object) -> tuple[int, ...]:
    if not isinstance(dilations, (list, tuple)) or len(dilations) == 0:
        raise ValueError(
            f"dilations must be a non-empty list or tuple of positive ints, e.g. "
            f"(1, 12, 24, 36); got {dilations!r}"
        )
    bad = [d for d in dilations if isinstance(d, bool) or not isinstance(d, int) or d < 1]
    if bad:
        raise ValueError(
            f"dilations must be positive ints (1 means the 1x1 branch); "
            f"got {tuple(dilations)!r} with invalid value(s) {bad!r}"
        )
    return tuple(dilations)


def _check_channels(name: str, value: object) -> None:
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values or any(
        isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values
    ):
        raise ValueError(f"{name} must be a positive int (or a list of them); got {value!r}")


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
        **kwargs: Every argument of mmseg's ``BaseDecodeHead`` (``in_channels``,
            ``channels``, ``num_classes``, ``norm_cfg``, ...).
    """

    def __init__(self, dilations: Sequence[int] = (1, 6, 12, 18), **kwargs) -> None:
        rates = _check_dilations(dilations)
        for name in ("in_channels", "channels"):
            if name in kwargs:
                _check_channels(name, kwargs[name])
        super().__init__(**kwargs)
        if self.conv_cfg not in (None, {"type": "Conv2d"}, {"type": "Conv"}):
            raise ValueError(
                f"ASPPHead supports plain convolutions only (conv_cfg=None); got "
                f"conv_cfg={self.conv_cfg!r}"
            )
        self.dilations = rates
        layer_cfg = dict(conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
        self.image_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            ConvModule(self.in_channels, self.channels, 1, **layer_cfg),
        )
        self.aspp_modules = nn.ModuleList(
            ConvModule(
                self.in_channels,
                self.channels,
                1 if rate == 1 else 3,
                dilation=rate,
                padding=0 if rate == 1 else rate,
                **layer_cfg,
            )
            for rate in self.dilations
        )
        self.bottleneck = ConvModule(
            (len(self.dilations) + 1) * self.channels, self.channels, 3, padding=1, **layer_cfg
        )

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(
                f"ASPPHead expects a 4-D feature map (N, C, H, W); got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"ASPPHead was built with in_channels={self.in_channels} but got a feature "
                f"map with {x.shape[1]} channels (shape {tuple(x.shape)}); set in_channels "
                f"or in_index to match the backbone output"
            )

    def _forward_feature(self, inputs: Sequence[Tensor]) -> Tensor:
        """Fused ASPP features before ``cls_seg``, shape (N, channels, H, W)."""
        x = self._transform_inputs(inputs)
        self._check_input(x)
        return aspp_features(x, self.image_pool[1], self.aspp_modules, self.dilations, self.bottleneck)

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        return self.cls_seg(self._forward_feature(inputs))
