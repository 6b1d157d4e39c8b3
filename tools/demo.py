#!/usr/bin/env python
"""End-to-end CPU demo: synthetic Cityscapes-layout data -> train -> test -> pictures.

Runs the same tools a user runs on real data (tools/train.py, tools/test.py)
and ends by printing where the checkpoint, metrics and pictures are.

    python tools/demo.py [--work-dir work_dirs/demo] [--iters 600]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CONFIG = os.path.join(ROOT, "configs", "demo", "deeplabv3_r18-d8_1xb4-300it_synthetic-cityscapes-96x192.py")
DATA = os.path.join(ROOT, "data", "synthetic_cityscapes")


def shown(cmd: list[str]) -> str:
    """A command line as the user would type it from the repository root."""
    return " ".join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd)


def run(step: str, cmd: list[str]) -> None:
    print(f"\n=== {step}: {shown(cmd)}", flush=True)
    result = subprocess.run(cmd, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"demo step '{step}' failed with exit code {result.returncode}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default=os.path.join(ROOT, "work_dirs", "demo"))
    parser.add_argument("--iters", type=int, default=300, help="training iterations (batch 4)")
    args = parser.parse_args(argv)
    work_dir = os.path.abspath(args.work_dir)
    started = time.time()

    if not os.path.isdir(os.path.join(DATA, "leftImg8bit")):
        run("data", [sys.executable, os.path.join(HERE, "make_synthetic_data.py"), "cityscapes", DATA])
    overrides = [f"train_cfg.max_iters={args.iters}", f"train_cfg.val_interval={args.iters}",
                 f"param_scheduler.0.end={args.iters}", f"default_hooks.checkpoint.interval={args.iters}"]
    run("train", [sys.executable, os.path.join(HERE, "train.py"), CONFIG, "--work-dir", work_dir,
                  "--cfg-options", *overrides])
    checkpoint = os.path.join(work_dir, f"iter_{args.iters}.pth")
    pictures = os.path.join(work_dir, "pictures")
    run("test", [sys.executable, os.path.join(HERE, "test.py"), CONFIG, checkpoint,
                 "--work-dir", os.path.join(work_dir, "test"), "--show-dir", pictures])

    with open(os.path.join(work_dir, "test", "test_metrics.json")) as f:
        metrics = json.load(f)
    images = sorted(glob.glob(os.path.join(pictures, "**", "*.png"), recursive=True))
    minutes = (time.time() - started) / 60
    print(f"\n=== demo finished in {minutes:.1f} min")
    print(f"mIoU on the synthetic val split: {metrics['mIoU']:.2f}%  (aAcc {metrics['aAcc']:.2f}%)")
    print(f"checkpoint : {checkpoint}")
    print(f"metrics    : {os.path.join(work_dir, 'test', 'test_metrics.json')}  (per-class IoU in the test log above)")
    print(f"pictures   : {len(images)} colour overlays (ground truth | prediction) under {pictures}")
    infer = [sys.executable, os.path.join(HERE, "infer.py"), CONFIG, checkpoint, "YOUR_IMAGE_FOLDER_OR_VIDEO"]
    print("\nsegment your own image, folder or video (overlays go to work_dirs/infer):")
    print(f"  {shown(infer)}")


if __name__ == "__main__":
    main()
