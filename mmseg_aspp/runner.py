"""mmengine's Runner with crash-safe checkpoints and lossless resume.

* Checkpoints are written to a hidden temporary file and renamed into place,
  so a run killed mid-save never leaves a half-written ``iter_N.pth``.
* Each checkpoint also stores the RNG states, restored on resume: a killed and
  resumed run draws the same dropout masks and augmentations as an
  uninterrupted one (see ``RngStateHook`` for the one exception).
* Loaded checkpoints are checked against the model: differing shapes or
  missing parameters are an error naming the keys, not a log warning.
"""
from __future__ import annotations

import glob
import os
import random
import re

import numpy as np
import torch
from mmengine.dist import master_only
from mmengine.hooks import Hook
from mmengine.runner import Runner
from torch import nn

from .checkpoint import check_state_dict_matches

PARTIAL_SUFFIX = ".partial"


def latest_checkpoint(work_dir: str) -> str | None:
    """The highest-numbered complete ``iter_N.pth`` / ``epoch_N.pth`` in ``work_dir``.

    Unlike mmengine's ``last_checkpoint`` pointer file, which is rewritten in
    place, the checkpoint files themselves only appear once complete.
    """
    found = []
    for path in glob.glob(os.path.join(work_dir, "*.pth")):
        match = re.fullmatch(r"(iter|epoch)_(\d+)\.pth", os.path.basename(path))
        if match:
            found.append((int(match.group(2)), path))
    return max(found)[1] if found else None


class RngStateHook(Hook):
    """Carry the RNG states across a checkpoint so a resumed run repeats the original.

    On resume mmengine's loop first moves the dataloader past the trained
    iterations. Older mmengine (0.10.7) does this by loading and discarding
    those batches, which replays the augmentation draws from numpy's RNG by
    itself; newer mmengine skips at the sampler without loading anything, so
    numpy's and Python's states are restored before that skip. torch's state
    (dropout) is restored just before the first resumed iteration.
    Validation creates dataloader iterators, which draw from torch's RNG; it is
    fenced off so training draws the same numbers whether or not one ran.
    With dataloader worker processes, each worker's generator is seeded afresh
    when the loader restarts, so augmentation after a resume is not bitwise
    that of the original run.
    """

    priority = "VERY_LOW"

    def __init__(self) -> None:
        self._pending: dict | None = None
        self._before_val: dict | None = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint["rng_state"] = dict(_torch_rng_state(), numpy=np.random.get_state(),
                                       python=random.getstate())

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self._pending = checkpoint.get("rng_state")

    def before_train_epoch(self, runner) -> None:
        skips_without_loading = hasattr(runner.train_loop.dataloader_iterator, "skip_iter")
        if self._pending is not None and skips_without_loading:
            np.random.set_state(self._pending["numpy"])
            random.setstate(self._pending["python"])

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self._pending is not None:
            _set_torch_rng_state(self._pending)
            self._pending = None

    def before_val(self, runner) -> None:
        self._before_val = _torch_rng_state()

    def after_val(self, runner) -> None:
        if self._before_val is not None:
            _set_torch_rng_state(self._before_val)
            self._before_val = None


def _torch_rng_state() -> dict:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return dict(torch=torch.get_rng_state(), cuda=cuda)


def _set_torch_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointGuardHook(Hook):
    """Refuse a checkpoint whose parameters do not fit the model (testing, resuming).

    Args:
        path: The checkpoint file, named in the error.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        model = runner.model
        while isinstance(getattr(model, "module", None), nn.Module):  # DDP, TTA wrappers
            model = model.module
        check_state_dict_matches(model, checkpoint.get("state_dict", checkpoint), self.path)


class ReliableRunner(Runner):
    """``Runner`` whose checkpoints are written atomically and carry RNG states."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_hook(RngStateHook())

    @master_only
    def save_checkpoint(self, out_dir: str, filename: str, *args, **kwargs) -> None:
        if not os.path.isdir(out_dir):  # a remote backend: leave it to mmengine
            return super().save_checkpoint(out_dir, filename, *args, **kwargs)
        partial = f".{filename}{PARTIAL_SUFFIX}"
        super().save_checkpoint(out_dir, partial, *args, **kwargs)
        os.replace(os.path.join(out_dir, partial), os.path.join(out_dir, filename))
