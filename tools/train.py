#!/usr/bin/env python
"""Train a segmentor from a config (mmseg's command line, mmengine's Runner).

    python tools/train.py CONFIG [--work-dir DIR] [--resume] [--amp] [--cfg-options k=v ...]
    bash tools/dist_train.sh CONFIG NUM_GPUS [...]        # torchrun, one process per GPU

SyncBN configs run unchanged on one GPU or on CPU (SyncBN becomes BN).
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), ".."))

from mmengine.config import DictAction  # noqa: E402
from mmseg_aspp.data import check_dataset_paths  # noqa: E402
from mmseg_aspp.runner import ReliableRunner  # noqa: E402
from mmseg_aspp.runtime import load_config, tool_session  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Train a segmentor")
    parser.add_argument("config", help="train config file path")
    parser.add_argument("--work-dir", help="where logs and checkpoints go")
    parser.add_argument("--resume", action="store_true", help="resume from the latest checkpoint in work-dir")
    parser.add_argument("--amp", action="store_true", help="automatic mixed precision (CUDA)")
    parser.add_argument("--unsafe-load", action="store_true",
                        help="allow checkpoints that need full unpickling (runs code they hold; trusted files only)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction,
                        help="override config entries, e.g. train_cfg.max_iters=100")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if not osp.isfile(args.config):
        sys.exit(f"config not found: {args.config}")
    with tool_session():
        cfg = load_config(args.config, args.cfg_options, args.launcher, args.work_dir)
        if args.amp:
            import torch

            if not torch.cuda.is_available():
                sys.exit("--amp uses CUDA autocast and needs a GPU; drop --amp to train on CPU")
            if cfg.optim_wrapper.get("type") != "AmpOptimWrapper":
                cfg.optim_wrapper.type = "AmpOptimWrapper"
                cfg.optim_wrapper.setdefault("loss_scale", "dynamic")
        check_dataset_paths(cfg, ("train_dataloader", "val_dataloader"))  # before anything is built
        cfg.unsafe_load = args.unsafe_load
        cfg.resume = args.resume
        # Safe loading, checked data, atomic checkpoints, bitwise resume from the newest
        # complete checkpoint: what runner_type selects in our configs, whatever they name.
        ReliableRunner.from_cfg(cfg).train()


if __name__ == "__main__":
    main()
