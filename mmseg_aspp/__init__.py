"""mmseg_aspp: a fast, exact DeepLabV3 ASPP decode head for MMSegmentation.

Importing the package registers ``mmseg_aspp.ASPPHead`` in a child registry of
mmseg's ``MODELS`` (and the checked loading transforms in one of ``TRANSFORMS``);
mmseg's own ``ASPPHead`` stays available unprefixed.
"""
from ._deps import check_dependencies

check_dependencies()

from .checkpoint import allow_mmengine_checkpoints, install_safe_loading, load_checkpoint_file  # noqa: E402
from .data import CheckedLoadAnnotations, CheckedLoadImageFromFile  # noqa: E402
from .errors import MmsegAsppError  # noqa: E402
from .models import ASPPHead  # noqa: E402
from .registry import MODELS, TRANSFORMS  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "ASPPHead", "CheckedLoadAnnotations", "CheckedLoadImageFromFile", "MODELS", "MmsegAsppError",
    "TRANSFORMS", "install_safe_loading", "load_checkpoint_file", "__version__",
]

# mmengine loads checkpoints through torch.load, whose default on torch >= 2.6 is
# weights_only=True: teach it what mmengine checkpoints contain.
allow_mmengine_checkpoints()
