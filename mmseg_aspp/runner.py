"""mmengine's Runner with safe loading, checked data, crash-safe checkpoints and lossless resume.

Our configs select it with ``runner_type = 'mmseg_aspp.ReliableRunner'``, so a run
started by our tools or by mmseg's own ``tools/train.py`` (which builds
``RUNNERS.build(cfg)`` when a config names a runner type) gets all of it:

* Checkpoints are read with ``torch.load(weights_only=True)`` only
  (``checkpoint.install_safe_loading``; ``unsafe_load=True`` in the config allows
  trusted legacy files) and checked against the model: differing shapes or
  missing parameters are an error naming the keys, not a log warning.
* Checkpoints are written to a hidden temporary file and renamed into place,
  so a run killed mid-save never leaves a half-written ``iter_N.pth``; resuming
  picks the newest complete file.
* Each checkpoint also stores the RNG states, restored on resume: a killed and
  resumed run draws the same dropout masks and augmentations as an
  uninterrupted one (see ``RngStateHook`` for the one exception).
* Dataset folders are checked before anything is built, and unreadable images
  or out-of-range labels fail with the file's name (``data.checks``).
* GPU recipes run on CPU: SyncBN becomes BN, and multi-process runs use gloo.

The checkpoint and data checks are hooks, also listed in the configs'
``custom_hooks``, so runners built without ``runner_type`` (mmseg's
``tools/test.py`` calls ``Runner.from_cfg``) apply them too.
"""
from __future__ import annotations

import copy
import glob
import os
import random
import re

import numpy as np
import torch
from mmengine.config import Config
from mmengine.dist import master_only
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.runner import Runner
from torch import nn

from .checkpoint import check_state_dict_matches, install_safe_loading
from .data import check_dataset_paths, check_loading
from .registry import HOOKS, RUNNERS
from .runtime import prepare_config

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


@HOOKS.register_module()
class CheckpointGuardHook(Hook):
    """Refuse a checkpoint whose parameters do not fit the model (testing, resuming)."""

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        model = runner.model
        while isinstance(getattr(model, "module", None), nn.Module):  # DDP, TTA wrappers
            model = model.module
        path = getattr(runner, "_load_from", None) or "the checkpoint"
        check_state_dict_matches(model, checkpoint.get("state_dict", checkpoint), path)


@HOOKS.register_module()
class DataCheckHook(Hook):
    """Wrap the loaders of every dataloader's pipeline with ``data.checks.CheckedLoading``."""

    priority = "VERY_HIGH"

    def before_train(self, runner) -> None:
        check_loading(runner.train_dataloader.dataset)

    def before_val(self, runner) -> None:
        check_loading(runner.val_dataloader.dataset)

    def before_test(self, runner) -> None:
        check_loading(runner.test_dataloader.dataset)


@RUNNERS.register_module()
class ReliableRunner(Runner):
    """``Runner`` with safe loading, checked data, atomic checkpoints and bitwise resume."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        registered = {type(hook) for hook in self.hooks}
        for hook in (RngStateHook, CheckpointGuardHook, DataCheckHook):
            if hook not in registered:
                self.register_hook(hook())

    @classmethod
    def from_cfg(cls, cfg: Config) -> "ReliableRunner":
        """Build from a config, adapted to the devices at hand and checked before anything is built.

        Args:
            cfg: A full config; ``launcher``, ``resume``, ``load_from`` and ``unsafe_load``
                are read as mmseg's tools and ours set them.
        """
        cfg = copy.deepcopy(cfg)
        prepare_config(cfg, cfg.get("launcher", "none"))
        install_safe_loading(unsafe=cfg.get("unsafe_load", False))
        if cfg.get("resume") and not cfg.get("load_from"):
            # The newest complete checkpoint file, rather than mmengine's
            # last_checkpoint pointer, which a kill can leave empty.
            cfg.load_from = latest_checkpoint(cfg.work_dir)
            if cfg.load_from is None:
                print_log(f"resume: no checkpoint in {cfg.work_dir} yet; starting from iteration 0",
                          logger="current")
        return super().from_cfg(cfg)

    # Each loop's dataset folders are checked when the loop is built, before its data is.
    def build_train_loop(self, loop):
        check_dataset_paths(self.cfg, ("train_dataloader",))
        return super().build_train_loop(loop)

    def build_val_loop(self, loop):
        check_dataset_paths(self.cfg, ("val_dataloader",))
        return super().build_val_loop(loop)

    def build_test_loop(self, loop):
        check_dataset_paths(self.cfg, ("test_dataloader",))
        return super().build_test_loop(loop)

    @master_only
    def save_checkpoint(self, out_dir: str, filename: str, *args, **kwargs) -> None:
        if not os.path.isdir(out_dir):  # a remote backend: leave it to mmengine
            return super().save_checkpoint(out_dir, filename, *args, **kwargs)
        partial = f".{filename}{PARTIAL_SUFFIX}"
        super().save_checkpoint(out_dir, partial, *args, **kwargs)
        os.replace(os.path.join(out_dir, partial), os.path.join(out_dir, filename))
