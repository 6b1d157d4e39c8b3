"""Load mmengine checkpoints with ``torch.load(weights_only=True)`` only.

mmengine checkpoints hold more than tensors: numpy arrays and scalars in the
message hub and meta, and mmengine's ``HistoryBuffer``, whose pickle refers to
its statistics methods through ``getattr``. This module allowlists exactly
those globals (including numpy 1.x module names found in older published
checkpoints) and never falls back to unpickling arbitrary objects.
"""
from __future__ import annotations

import os
import pickle
from typing import Any, Callable

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint needs a global that is not on the allowlist."""


# HistoryBuffer fills _statistics_methods with these on first instantiation.
_HISTORY_STATISTICS = ("min", "max", "current", "mean")


def _history_buffer_getattr(obj: Any, name: str) -> Any:
    """``getattr`` restricted to what HistoryBuffer pickles reference."""
    allowed = (*_HISTORY_STATISTICS, *HistoryBuffer._statistics_methods)
    if obj is HistoryBuffer and name in allowed:
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f"refused getattr({obj!r}, {name!r}): only HistoryBuffer statistics may be looked up"
    )


def _numpy_globals() -> list[tuple[Callable, str]]:
    core = np._core if hasattr(np, "_core") else np.core
    entries = [(np.ndarray, "numpy.ndarray"), (np.dtype, "numpy.dtype")]
    for module in ("numpy.core", "numpy._core"):  # numpy 1.x and 2.x pickles
        entries.append((core.multiarray._reconstruct, f"{module}.multiarray._reconstruct"))
        entries.append((core.multiarray.scalar, f"{module}.multiarray.scalar"))
    for code in "?bBhHiIlLqQefdgFDGSUV":  # dtype classes, e.g. numpy.dtypes.Float64DType
        cls = type(np.dtype(code))
        if cls is not np.dtype:
            entries.append((cls, f"{cls.__module__}.{cls.__name__}"))
    return entries


def safe_globals() -> list[tuple[Callable, str]]:
    """Every global an mmengine/mmseg checkpoint may reference, with its pickled name."""
    history = HistoryBuffer
    return _numpy_globals() + [
        (history, f"{history.__module__}.{history.__name__}"),
        (_history_buffer_getattr, "builtins.getattr"),
    ]


def allow_mmengine_checkpoints() -> None:
    """Register the allowlist so any ``torch.load(weights_only=True)`` accepts mmengine files."""
    if not hasattr(torch.serialization, "add_safe_globals"):  # torch < 2.4
        return
    # Idempotent on purpose. A torch.serialization.safe_globals() context is
    # not used: on exit it removes its entries even if they were registered before.
    registered = torch.serialization.get_safe_globals()
    missing = [entry for entry in safe_globals() if entry not in registered]
    if missing:
        torch.serialization.add_safe_globals(missing)


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Read a checkpoint without ever unpickling non-allowlisted objects.

    Args:
        path: Path to a ``.pth`` file written by ``torch.save`` / mmengine.
        map_location: Passed to ``torch.load``.

    Raises:
        FileNotFoundError: The file does not exist.
        UnsafeCheckpointError: The file references a global outside the allowlist.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    allow_mmengine_checkpoints()
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it needs a global outside the mmengine checkpoint "
            f"allowlist ({err}). Only load files you trust."
        ) from err
