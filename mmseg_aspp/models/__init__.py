from .aspp_head import ASPPHead
from .cascade import CascadedResNetV1c
from .conv import PlannedConv2d
from .sep_aspp_head import DepthwiseSeparableASPPHead

__all__ = ["ASPPHead", "CascadedResNetV1c", "DepthwiseSeparableASPPHead", "PlannedConv2d"]
