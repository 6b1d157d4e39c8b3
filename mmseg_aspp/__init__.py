"""mmseg_aspp: fast, exact DeepLabV3 and DeepLabV3+ ASPP decode heads for MMSegmentation.

Importing the package (``custom_imports = dict(imports=['mmseg_aspp'])``) does two
things. It registers ``mmseg_aspp.ASPPHead``, ``mmseg_aspp.DepthwiseSeparableASPPHead``,
``mmseg_aspp.ReliableRunner`` and our hooks in child registries of mmseg's (unprefixed
names such as ``ASPPHead`` stay mmseg's). And it makes every checkpoint mmengine loads in this process go through
``load_checkpoint_file``: ``torch.load(weights_only=True)`` with an allowlist of what
mmengine checkpoints hold, never a fallback that unpickles code
(``install_safe_loading(unsafe=True)`` allows trusted legacy files again).
Everything else (atomic checkpoints, bitwise resume, data checks) comes with the
runner and hooks our configs select.
"""
from ._deps import check_dependencies

check_dependencies()

from .checkpoint import allow_mmengine_checkpoints, install_safe_loading, load_checkpoint_file  # noqa: E402
from .errors import MmsegAsppError  # noqa: E402
from .models import ASPPHead, DepthwiseSeparableASPPHead, PlannedConv2d  # noqa: E402
from .registry import HOOKS, MODELS, RUNNERS  # noqa: E402
from .runner import CheckpointGuardHook, DataCheckHook, ReliableRunner  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "ASPPHead", "CheckpointGuardHook", "DataCheckHook", "DepthwiseSeparableASPPHead", "HOOKS", "MODELS", "MmsegAsppError", "RUNNERS",
    "ReliableRunner", "install_safe_loading", "load_checkpoint_file", "__version__",
]

install_safe_loading()
