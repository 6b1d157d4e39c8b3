from .aspp_head import ASPPHead
from .sep_aspp_head import DepthwiseSeparableASPPHead

__all__ = ["ASPPHead", "DepthwiseSeparableASPPHead"]
