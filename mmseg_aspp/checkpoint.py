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
import re
import warnings
from typing import Any, Callable, Mapping
from urllib.parse import urlparse

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from torch import nn

from .errors import MmsegAsppError


class CheckpointError(MmsegAsppError):
    """A checkpoint cannot be used; the message names the file."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint needs a global that is not on the allowlist."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint file is truncated, corrupt or not a PyTorch checkpoint."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's parameters do not fit the model built from the config."""


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


# torch names the refused global in several phrasings across versions.
_UNSAFE_MARKERS = re.compile(r"GLOBAL ([\w.]+)|(refused getattr\([^)]*\))")


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = "cpu", *, unsafe: bool = False) -> dict:
    """Read a checkpoint without ever unpickling non-allowlisted objects.

    Args:
        path: Path to a ``.pth`` file written by ``torch.save`` / mmengine.
        map_location: Passed to ``torch.load``.
        unsafe: Unpickle anything (``weights_only=False``), with a warning; only
            for trusted legacy files that hold other objects.

    Raises:
        FileNotFoundError: The file does not exist.
        UnsafeCheckpointError: The file references a global outside the allowlist.
        DamagedCheckpointError: Reading the file failed in any other way (truncated,
            corrupt, not a checkpoint); the message gives the file, its size and the reason.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if unsafe:
        warnings.warn(f"unsafe load of {path}: unpickling with weights_only=False can run any "
                      f"code the file holds; use this only for files you trust", stacklevel=2)
    else:
        allow_mmengine_checkpoints()
    try:
        return torch.load(path, map_location=map_location, weights_only=not unsafe)
    except pickle.UnpicklingError as err:
        found = _UNSAFE_MARKERS.search(str(err))
        if found is None:
            raise _damaged(path, err) from err
        offending = next(group for group in found.groups() if group)
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it references {offending}, which is not part of what "
            f"mmengine checkpoints contain, so unpickling it could run code. Nothing from the file "
            f"was executed. If you trust the file, pass --unsafe-load to the tools "
            f"(load_checkpoint_file(..., unsafe=True) in Python)."
        ) from err
    except Exception as err:  # noqa: BLE001  damaged bytes make torch's reader fail in any way
        raise _damaged(path, err) from err


def _damaged(path: str, err: BaseException) -> DamagedCheckpointError:
    # Skip torch's generic weights_only preamble to reach the actual reason.
    paragraphs = [p.strip() for p in str(err).split("\n\n") if p.strip()]
    if len(paragraphs) > 1 and paragraphs[0].startswith("Weights only load failed"):
        paragraphs = paragraphs[1:]
    reason = f"{type(err).__name__}: {paragraphs[0].splitlines()[0]}" if paragraphs else type(err).__name__
    return DamagedCheckpointError(
        f"cannot read checkpoint {path} ({os.path.getsize(path)} bytes): it is truncated, corrupt or "
        f"not a PyTorch checkpoint ({reason}). Download or copy it again."
    )


def check_state_dict_matches(model: nn.Module, state_dict: Mapping[str, Any], path: str) -> None:
    """Raise if the checkpoint's parameters do not fit ``model`` (shapes or missing keys).

    Extra keys in the checkpoint are allowed (e.g. an auxiliary head the config drops).

    Raises:
        CheckpointMismatchError: Naming every differing key and both shapes.
    """
    expected = model.state_dict()
    state_dict = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    mismatched = [
        key for key, value in expected.items()
        if key in state_dict and getattr(state_dict[key], "shape", value.shape) != value.shape
    ]
    missing = [key for key in expected if key not in state_dict]
    if not mismatched and not missing:
        return
    lines = [f"checkpoint {path} does not fit the model built from the config:"]
    if mismatched:
        lines.append("parameters with different shapes:")
        lines += [f"  {key}: checkpoint {tuple(state_dict[key].shape)}, model {tuple(expected[key].shape)}"
                  for key in mismatched]
        if any(key.endswith("conv_seg.weight") for key in mismatched):
            lines.append("the classifier differs: check num_classes in the config against the checkpoint")
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        lines.append(f"missing from the checkpoint: {shown}")
    raise CheckpointMismatchError("\n".join(lines))


def install_safe_loading(unsafe: bool = False) -> None:
    """Route mmengine's checkpoint loading (local files and URLs) through ``load_checkpoint_file``.

    mmengine's own local loader falls back to ``weights_only=False`` on the default
    stack, and its URL loader unpickles without restriction; after this call
    neither is used. ``CheckpointLoader.register_scheme(..., force=True)`` is
    mmengine's documented way to replace a scheme's loader.

    Args:
        unsafe: Allow full unpickling (``--unsafe-load``), with a warning per file.
    """
    from mmengine.runner import checkpoint as mmengine_checkpoint

    allow_mmengine_checkpoints()  # plain torch.load(weights_only=True) accepts them too

    def load_local(filename: str, map_location: Any = None) -> dict:
        return load_checkpoint_file(os.path.expanduser(filename), map_location, unsafe=unsafe)

    def load_url(url: str, map_location: Any = None, model_dir: str | None = None, **_: Any) -> dict:
        folder = model_dir or os.path.join(torch.hub.get_dir(), "checkpoints")
        local = os.path.join(folder, os.path.basename(urlparse(url).path))
        if not os.path.isfile(local):
            os.makedirs(folder, exist_ok=True)
            torch.hub.download_url_to_file(url, local)  # writes a temp file, then renames
        return load_local(local, map_location)

    loader = mmengine_checkpoint.CheckpointLoader
    loader.register_scheme(prefixes="", loader=load_local, force=True)
    loader.register_scheme(prefixes=("http://", "https://"), loader=load_url, force=True)
    # open-mmlab://, torchvision:// and mmcls:// resolve a URL and call this name directly.
    mmengine_checkpoint.load_from_http = load_url
