"""mmseg_aspp: a fast, exact DeepLabV3 ASPP decode head for MMSegmentation.

Importing the package registers ``mmseg_aspp.ASPPHead`` in a child registry of
mmseg's ``MODELS``; mmseg's own ``ASPPHead`` stays available unprefixed.
"""
from ._deps import check_dependencies

check_dependencies()

from .models import ASPPHead  # noqa: E402
from .registry import MODELS  # noqa: E402

__version__ = "0.1.0"
__all__ = ["ASPPHead", "MODELS", "__version__"]
