"""mmseg_aspp: a fast, exact DeepLabV3 ASPP decode head for MMSegmentation.

Importing the package registers ``mmseg_aspp.ASPPHead`` in a child registry of
mmseg's ``MODELS``; mmseg's own ``ASPPHead`` stays available unprefixed.
"""
from ._deps import check_dependencies

check_dependencies()

from .checkpoint import allow_mmengine_checkpoints, load_checkpoint_file  # noqa: E402
from .models import ASPPHead  # noqa: E402
from .registry import MODELS  # noqa: E402

__version__ = "0.1.0"
__all__ = ["ASPPHead", "MODELS", "load_checkpoint_file", "__version__"]

# mmengine loads checkpoints through torch.load, whose default on torch >= 2.6 is
# weights_only=True: teach it what mmengine checkpoints contain.
allow_mmengine_checkpoints()
