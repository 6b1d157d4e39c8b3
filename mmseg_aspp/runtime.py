"""Config adjustments shared by ``tools/train.py`` and ``tools/test.py``.

Recipes are written for GPUs (SyncBN, NCCL, DDP on a CUDA device). These
helpers let the same config run unchanged on one GPU, on CPU, and in a
multi-process CPU run (gloo), which is how the tests exercise DDP.
"""
from __future__ import annotations

import datetime
import logging
import os
import sys
from contextlib import contextmanager
from typing import Iterator

import torch
from mmengine.config import Config

from .errors import MmsegAsppError, user_message


def replace_sync_bn(node):
    """Return ``node`` with every ``SyncBN`` norm config turned into ``BN``."""
    if isinstance(node, dict):
        new = {k: replace_sync_bn(v) for k, v in node.items()}
        if new.get("type") == "SyncBN":
            new["type"] = "BN"
        return node.__class__(new)
    if isinstance(node, (list, tuple)):
        return type(node)(replace_sync_bn(v) for v in node)
    return node


def load_config(path: str, cfg_options: dict | None, launcher: str, work_dir: str | None) -> Config:
    """Read a config for the tools: overrides merged, launcher and work dir set.

    Args:
        path: Config file.
        cfg_options: ``--cfg-options`` overrides, or None.
        launcher: ``none``, ``pytorch``, ``slurm`` or ``mpi``.
        work_dir: ``--work-dir``; defaults to the config's or ``./work_dirs/<config name>``.
    """
    cfg = Config.fromfile(path)  # imports mmseg_aspp through custom_imports
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.launcher = launcher
    name = os.path.splitext(os.path.basename(path))[0]
    cfg.work_dir = work_dir or cfg.get("work_dir") or os.path.join("./work_dirs", name)
    return cfg


def prepare_config(cfg: Config, launcher: str) -> None:
    """Adapt a GPU recipe to the devices at hand (in place)."""
    cfg.launcher = launcher
    if torch.cuda.is_available():
        return
    # SyncBN needs CUDA; without it every process normalises its own batch.
    cfg.model = replace_sync_bn(cfg.model)
    if launcher != "none":
        cfg.env_cfg.setdefault("dist_cfg", {})["backend"] = "gloo"
        # DDP rejects device_ids for a CPU module.
        cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None,
                                     broadcast_buffers=False, find_unused_parameters=False)
        init_cpu_process_group(cfg)


def init_cpu_process_group(cfg: Config) -> None:
    """Start a gloo process group from torchrun's environment.

    mmengine's own ``init_dist`` calls ``torch.cuda.set_device`` and so fails on a
    CPU-only torch; the Runner skips it when a group already exists.
    """
    import torch.distributed as dist

    if dist.is_initialized():
        return
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"--launcher pytorch expects torchrun's environment; missing {missing}. "
            f"Start with tools/dist_train.sh or torchrun --nproc-per-node N tools/train.py ..."
        )
    timeout = cfg.env_cfg.get("dist_cfg", {}).get("timeout", 1800)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout))


@contextmanager
def tool_session() -> Iterator[None]:
    """Run a tool's work: our errors end it with one message and exit code 1, and the
    process group (if any) is torn down on the way out."""
    try:
        yield
    except MmsegAsppError as err:
        sys.exit(f"error: {user_message(err)}")
    finally:
        distributed = shutdown_distributed()
    if distributed:
        # A distributed worker that finished its work exits here, skipping the interpreter's
        # and C++'s teardown: there, threads of torch.distributed that the destroyed group's
        # last owners (DDP, the store) still keep can abort the process ("terminate called
        # without an active exception"), turning a completed run into a failed one.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def shutdown_distributed() -> bool:
    """Tear down the process group, if any, before the interpreter exits; whether there was one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        return True
    return False
