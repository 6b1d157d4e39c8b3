from .aspp_head import ASPPHead

__all__ = ["ASPPHead"]
