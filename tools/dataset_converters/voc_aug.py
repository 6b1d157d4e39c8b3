#!/usr/bin/env python
"""Merge the SBD augmented annotations into Pascal VOC 2012 (``SegmentationClassAug``).

Writes ``SegmentationClassAug/*.png`` (class indices; SBD ``cls/*.mat`` plus the
VOC ``SegmentationClass`` PNGs) and ``ImageSets/Segmentation/aug.txt``: every
SBD and VOC training image that is not in VOC val. Needs ``scipy``.

    python tools/dataset_converters/voc_aug.py data/VOCdevkit data/VOCdevkit/VOCaug --nproc 8
"""
from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from multiprocessing import Pool

import numpy as np
from PIL import Image


def _read_list(path: str) -> list[str]:
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def _mat_to_png(name: str, in_dir: str, out_dir: str) -> None:
    from scipy.io import loadmat

    seg = loadmat(os.path.join(in_dir, f"{name}.mat"))["GTcls"][0]["Segmentation"][0]
    Image.fromarray(seg.astype(np.uint8)).save(os.path.join(out_dir, f"{name}.png"))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("devkit_path", help="folder holding VOC2012/")
    parser.add_argument("aug_path", help="SBD folder holding dataset/cls and dataset/{train,val}.txt")
    parser.add_argument("--nproc", type=int, default=1)
    args = parser.parse_args(argv)
    voc = os.path.join(args.devkit_path, "VOC2012")
    sbd = os.path.join(args.aug_path, "dataset")
    for path in (os.path.join(voc, "SegmentationClass"), os.path.join(sbd, "cls")):
        if not os.path.isdir(path):
            sys.exit(f"missing {path}: check devkit_path and aug_path")
    out_dir = os.path.join(voc, "SegmentationClassAug")
    os.makedirs(out_dir, exist_ok=True)

    sbd_names = _read_list(os.path.join(sbd, "train.txt")) + _read_list(os.path.join(sbd, "val.txt"))
    with Pool(args.nproc) as pool:
        convert = partial(_mat_to_png, in_dir=os.path.join(sbd, "cls"), out_dir=out_dir)
        for done, _ in enumerate(pool.imap_unordered(convert, sbd_names), 1):
            print(f"\r{done}/{len(sbd_names)} SBD labels", end="", flush=True)
    print()
    for name in os.listdir(os.path.join(voc, "SegmentationClass")):
        indices = np.asarray(Image.open(os.path.join(voc, "SegmentationClass", name)))  # palette -> index
        Image.fromarray(indices).save(os.path.join(out_dir, name))

    sets = os.path.join(voc, "ImageSets", "Segmentation")
    val = set(_read_list(os.path.join(sets, "val.txt")))
    train = set(_read_list(os.path.join(sets, "train.txt")))
    aug = sorted((set(sbd_names) | train) - val)
    with open(os.path.join(sets, "aug.txt"), "w") as f:
        f.write("".join(f"{n}\n" for n in aug))
    print(f"{len(aug)} images in aug.txt")


if __name__ == "__main__":
    main()
