#!/usr/bin/env python
"""Evaluate a checkpoint (mmseg's command line, mmengine's Runner).

    python tools/test.py CONFIG CHECKPOINT [--out DIR] [--show-dir DIR] [--tta] [--output-stride 8]
    bash tools/dist_test.sh CONFIG CHECKPOINT NUM_GPUS [...]
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import sys

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), ".."))

from mmengine.config import Config, DictAction  # noqa: E402

from mmseg_aspp.data import check_dataset_paths  # noqa: E402
from mmseg_aspp.output_stride import set_output_stride  # noqa: E402
from mmseg_aspp.runner import ReliableRunner  # noqa: E402
from mmseg_aspp.runtime import load_config, tool_session  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Evaluate a segmentor checkpoint")
    parser.add_argument("config", help="test config file path")
    parser.add_argument("checkpoint", help="checkpoint file")
    parser.add_argument("--work-dir", help="where metrics and logs go")
    parser.add_argument("--out", help="save predicted label maps (PNG) to this folder")
    parser.add_argument("--show", action="store_true", help="show predictions in a window")
    parser.add_argument("--show-dir", help="save colour overlays of predictions to this folder")
    parser.add_argument("--wait-time", type=float, default=2, help="seconds between --show images")
    parser.add_argument("--tta", action="store_true", help="multi-scale + flip test-time augmentation")
    parser.add_argument("--output-stride", type=int, choices=[8, 16, 32],
                        help="evaluate at this output stride (e.g. 8 for a model trained at 16): "
                             "backbone strides become dilations and ASPP rates rescale; same weights")
    parser.add_argument("--unsafe-load", action="store_true",
                        help="allow a checkpoint that needs full unpickling (runs code it holds; trusted files only)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config entries")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return args


def enable_visualization(cfg: Config, args) -> None:
    hook = cfg.default_hooks.get("visualization")
    if hook is None:
        sys.exit("--show/--show-dir need a 'visualization' entry in default_hooks")
    hook.update(draw=True, interval=1, show=args.show, wait_time=args.wait_time)
    if args.show_dir:
        cfg.visualizer.save_dir = osp.abspath(args.show_dir)
        # the hook writes under visualizer.save_dir/vis_data/vis_image by default
        cfg.visualizer.vis_backends = [dict(type="LocalVisBackend", save_dir=cfg.visualizer.save_dir)]


def main(argv=None) -> None:
    args = parse_args(argv)
    for path, what in ((args.config, "config"), (args.checkpoint, "checkpoint")):
        if not osp.isfile(path):
            sys.exit(f"{what} not found: {path}")
    with tool_session():
        cfg = load_config(args.config, args.cfg_options, args.launcher, args.work_dir)
        check_dataset_paths(cfg, ("test_dataloader",))  # before anything is built
        cfg.unsafe_load = args.unsafe_load
        cfg.load_from = args.checkpoint
        if args.output_stride:
            old = set_output_stride(cfg.model, args.output_stride)
            head = {k: v for k, v in cfg.model.decode_head.items() if k in ("dilations", "output_stride")}
            print(f"output stride {old} -> {args.output_stride}: backbone strides "
                  f"{cfg.model.backbone.strides}, dilations {cfg.model.backbone.dilations}; head {head}")
        if args.show or args.show_dir:
            enable_visualization(cfg, args)
        if args.tta:
            cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
            cfg.tta_model.module = cfg.model
            cfg.model = cfg.tta_model
        if args.out:
            cfg.test_evaluator["output_dir"] = args.out
            cfg.test_evaluator["keep_results"] = True

        runner = ReliableRunner.from_cfg(cfg)  # safe loading, checkpoint and data checks
        metrics = runner.test()
        if runner.rank == 0:
            path = osp.join(cfg.work_dir, "test_metrics.json")
            with open(path, "w") as f:
                json.dump({k: float(v) for k, v in metrics.items()}, f, indent=1)
            print(f"metrics written to {path}")


if __name__ == "__main__":
    main()
