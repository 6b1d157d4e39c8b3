from .aspp_head import ASPPHead
from .conv import PlannedConv2d
from .sep_aspp_head import DepthwiseSeparableASPPHead

__all__ = ["ASPPHead", "DepthwiseSeparableASPPHead", "PlannedConv2d"]
