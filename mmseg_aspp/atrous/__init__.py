"""The fast, exact atrous core used by ``mmseg_aspp.ASPPHead``."""
from .geometry import effective_kernel, valid_tap_fraction
from .aspp import aspp_features

__all__ = ["aspp_features", "effective_kernel", "valid_tap_fraction"]
