#!/usr/bin/env python
"""Segment your own images or video with a trained checkpoint (mmseg's MMSegInferencer).

    python tools/infer.py CONFIG CHECKPOINT photo.jpg          # -> work_dirs/infer/photo.png
    python tools/infer.py CONFIG CHECKPOINT photos/            # every image in the folder
    python tools/infer.py CONFIG CHECKPOINT clip.mp4           # -> work_dirs/infer/clip_overlay.mp4

Each output is the input with the predicted classes painted over it in the
dataset's palette; ``--save-labels`` also writes the class-index PNGs.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys
import time

import cv2
import numpy as np

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), ".."))

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="the config the checkpoint was trained with")
    parser.add_argument("checkpoint", help="checkpoint file (read with weights_only=True)")
    parser.add_argument("input", help="an image, a folder of images or a video file")
    parser.add_argument("--out-dir", default="work_dirs/infer", help="where the overlays go")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--opacity", type=float, default=0.5, help="weight of the class colours, 0..1")
    parser.add_argument("--save-labels", action="store_true", help="also write class-index PNGs")
    return parser.parse_args(argv)


def overlay(image_bgr: np.ndarray, labels: np.ndarray, palette: np.ndarray, opacity: float) -> np.ndarray:
    """The image with each pixel blended towards its class colour (palette in RGB)."""
    colours = palette[np.clip(labels, 0, len(palette) - 1)][..., ::-1]
    return (image_bgr * (1 - opacity) + colours * opacity).round().astype(np.uint8)


def list_images(path: str) -> list[str]:
    if osp.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS))
        return [osp.join(path, n) for n in names]
    return [path]


def report(done: int, total: int | None, started: float, name: str) -> None:
    elapsed = time.time() - started
    if total:
        eta = elapsed / done * (total - done)
        print(f"\r[{done}/{total}] {name}  {elapsed:.0f} s, about {eta:.0f} s left ", end="", file=sys.stderr)
    else:
        print(f"\r[{done}] {name}  {elapsed:.0f} s ", end="", file=sys.stderr)


def main(argv=None) -> None:
    args = parse_args(argv)
    for path, what in ((args.config, "config"), (args.checkpoint, "checkpoint"), (args.input, "input")):
        if not osp.exists(path):
            sys.exit(f"{what} not found: {path}")
    if not 0 <= args.opacity <= 1:
        sys.exit(f"--opacity must be between 0 and 1; got {args.opacity}")
    is_video = osp.isfile(args.input) and args.input.lower().endswith(VIDEO_EXTENSIONS)
    images = [] if is_video else list_images(args.input)
    if not is_video and not images:
        sys.exit(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {args.input}")

    import torch
    from mmseg.apis import MMSegInferencer

    from mmseg_aspp.runtime import tool_session

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    with tool_session():
        inferencer = MMSegInferencer(model=args.config, weights=args.checkpoint, device=device)
        palette = np.asarray(inferencer.model.dataset_meta["palette"], dtype=np.float64)
        os.makedirs(args.out_dir, exist_ok=True)

        def predict(image_bgr: np.ndarray) -> np.ndarray:
            return inferencer(image_bgr, return_datasamples=True).pred_sem_seg.data[0].cpu().numpy()

        started = time.time()
        if is_video:
            written = segment_video(args, predict, palette, started)
            print(f"\nwrote {written}")
            return
        failed = []
        for done, path in enumerate(images, 1):
            image = cv2.imread(path)
            if image is None:
                failed.append(path)
                continue
            labels = predict(image)
            stem = osp.splitext(osp.basename(path))[0]
            cv2.imwrite(osp.join(args.out_dir, f"{stem}.png"), overlay(image, labels, palette, args.opacity))
            if args.save_labels:
                cv2.imwrite(osp.join(args.out_dir, f"{stem}_labels.png"), labels.astype(np.uint8))
            report(done, len(images), started, osp.basename(path))
        print(f"\nwrote {len(images) - len(failed)} overlay(s) to {args.out_dir}")
        if failed:
            sys.exit(f"could not read {len(failed)} image(s): {', '.join(failed)}")


def segment_video(args, predict, palette: np.ndarray, started: float) -> str:
    """Overlay every frame of ``args.input`` into ``<name>_overlay.mp4`` in the output folder."""
    capture = cv2.VideoCapture(args.input)
    if not capture.isOpened():
        sys.exit(f"cannot read video {args.input}: OpenCV could not open it")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    stem = osp.splitext(osp.basename(args.input))[0]
    out_path = osp.join(args.out_dir, f"{stem}_overlay.mp4")
    writer = None
    done = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        labels = predict(frame)
        if writer is None:
            height, width = frame.shape[:2]
            writer = cv2.VideoWriter(out_path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        writer.write(overlay(frame, labels, palette, args.opacity))
        if args.save_labels:
            cv2.imwrite(osp.join(args.out_dir, f"{stem}_{done:06d}_labels.png"), labels.astype(np.uint8))
        done += 1
        report(done, total, started, f"frame {done}")
    capture.release()
    if writer is None:
        sys.exit(f"cannot read video {args.input}: it has no frames")
    writer.release()
    return f"{out_path} ({done} frames)"


if __name__ == "__main__":
    main()
