"""Import-time check that a usable MMSegmentation stack is installed."""
from __future__ import annotations

import importlib

_INSTALL_HINT = (
    "mmseg_aspp needs torch plus one MMSegmentation stack. Install one of:\n"
    "  pip install 'mmseg-aspp[onedl]'      # onedl-mmengine / onedl-mmcv / onedl-mmsegmentation\n"
    "  pip install 'mmseg-aspp[openmmlab]'  # mmengine==0.10.7, mmcv==2.1.0 (built with ops), "
    "mmsegmentation==1.2.2\n"
    "For the OpenMMLab stack build mmcv against your torch first:\n"
    "  pip install 'setuptools<70' && MMCV_WITH_OPS=1 pip install --no-build-isolation mmcv==2.1.0"
)


def check_dependencies() -> None:
    """Raise an ``ImportError`` naming what to install if the stack is unusable."""
    for name in ("torch", "mmengine", "mmcv", "mmseg"):
        try:
            importlib.import_module(name)
        except ImportError as err:  # the inner message says which piece is broken
            raise ImportError(
                f"mmseg_aspp could not import '{name}' ({err}).\n{_INSTALL_HINT}"
            ) from err
    try:
        importlib.import_module("mmseg.models.decode_heads")
    except ImportError as err:
        raise ImportError(
            f"mmseg is installed but its decode heads do not import ({err}). "
            f"This usually means mmcv was installed without compiled ops or does "
            f"not match mmseg.\n{_INSTALL_HINT}"
        ) from err
