"""DeepLabV3+ decode head: depthwise-separable ASPP on the fast core, plus mmseg's decoder."""
from __future__ import annotations

from typing import Sequence

from mmcv.cnn import ConvModule, DepthwiseSeparableConvModule
import torch
from mmseg.models.utils import resize
from torch import Tensor, nn

from ..registry import MODELS
from .aspp_head import ASPPArgumentError, ASPPHead
from .conv import PlannedConv2d


@MODELS.register_module()
class DepthwiseSeparableASPPHead(ASPPHead):
    """The decode head of DeepLabV3+ (Chen et al., 2018): ASPP with depthwise-separable atrous
    branches, then a decoder that joins the ASPP output, upsampled, with low-level features.

    Parameters and ``state_dict`` keys are exactly those of mmseg's
    ``DepthwiseSeparableASPPHead``, so its published checkpoints load unchanged. The ASPP
    part runs on our core (cropped depthwise kernels, the image-pool shortcut, the planned
    bottleneck); the decoder is mmseg's computation.

    Args:
        c1_in_channels: Channels of the low-level features (``inputs[0]``, output stride 4);
            0 builds no decoder.
        c1_channels: Channels the low-level features are reduced to (0 without a decoder).
        **kwargs: Every argument of our ``ASPPHead`` (``dilations``, ``output_stride``,
            ``pool_norm_cfg``, ``plan``, and mmseg's ``BaseDecodeHead`` arguments).
    """

    def __init__(self, c1_in_channels: int, c1_channels: int, **kwargs) -> None:
        for name, value in (("c1_in_channels", c1_in_channels), ("c1_channels", c1_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ASPPArgumentError(f"{name} must be an int >= 0; got {value!r}")
        if c1_in_channels == 0 and c1_channels != 0:
            raise ASPPArgumentError(
                f"c1_in_channels=0 builds no decoder, so c1_channels must be 0 too; got c1_channels={c1_channels}")
        super().__init__(**kwargs)
        # The decoder runs mmseg's computation on our convolution layer (the same parameters):
        # pointwise convolutions as GEMMs, BatchNorm folded in inference.
        planned = dict(type=PlannedConv2d, plan=self.plan)
        layer_cfg = dict(conv_cfg=planned, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
        self.c1_bottleneck = ConvModule(c1_in_channels, c1_channels, 1, **layer_cfg) if c1_in_channels else None
        separable = dict(kernel_size=3, padding=1, conv_cfg=planned, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
        self.sep_bottleneck = nn.Sequential(
            DepthwiseSeparableConvModule(self.channels + c1_channels, self.channels, **separable),
            DepthwiseSeparableConvModule(self.channels, self.channels, **separable),
        )

    def _atrous_branch(self, rate: int) -> nn.Module:
        if rate == 1:
            return super()._atrous_branch(rate)
        return DepthwiseSeparableConvModule(self.in_channels, self.channels, 3, dilation=rate, padding=rate,
                                            conv_cfg=dict(type=PlannedConv2d, plan=self.plan),
                                            norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)

    def _forward_feature(self, inputs: Sequence[Tensor]) -> Tensor:
        """Decoder output before ``cls_seg``, at the low-level features' size when there is a decoder."""
        out = super()._forward_feature(inputs)
        if self.c1_bottleneck is not None:
            low_level = self.c1_bottleneck(inputs[0])
            out = resize(out, size=low_level.shape[2:], mode="bilinear", align_corners=self.align_corners)
            out = torch.cat([out, low_level], dim=1)
        return self.sep_bottleneck(out)
