#!/usr/bin/env python
"""Write a small deterministic dataset in the real Cityscapes or Pascal VOC layout.

Scenes hold textured shapes. Classes come in pairs that share a colour family
and differ only by texture (stripe angle, checks, dots), and colour jitter and
pixel noise are strong, so a network has to learn texture, not just colour. Labels mark
a thin band around every shape and a few blobs as ignore (255), like real sets.

mmseg's own CityscapesDataset / PascalVOCDataset read the output unchanged:

    python tools/make_synthetic_data.py cityscapes data/synthetic_cityscapes
    python tools/make_synthetic_data.py voc data/synthetic_voc   # -> VOCdevkit/VOC2012
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

IGNORE = 255
# class id -> (RGB colour, texture kind, parameter)
CITYSCAPES_CLASSES = {  # trainIds; pairs share a colour family and differ by texture
    0: ((128, 64, 128), "noise", 0),       # road: the ground
    10: ((70, 130, 180), "smooth", 0),     # sky: the top band
    1: ((150, 150, 150), "stripes", 0),    # sidewalk
    2: ((140, 140, 140), "checks", 8),     # building
    8: ((107, 142, 35), "dots", 5),        # vegetation
    11: ((180, 60, 60), "stripes", 90),    # person
    13: ((170, 70, 70), "stripes", 45),    # car
}
VOC_CLASSES = {
    0: ((40, 40, 40), "noise", 0),          # background
    1: ((200, 60, 60), "stripes", 0),       # aeroplane
    7: ((60, 60, 200), "checks", 6),        # car
    8: ((200, 180, 60), "dots", 4),         # cat
    12: ((120, 60, 160), "stripes", 45),    # horse
    15: ((230, 150, 120), "stripes", 90),   # person
}
CITIES = {"train": ["aachen", "bremen"], "val": ["frankfurt"]}


def _texture(kind: str, param: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == "stripes":
        angle = np.deg2rad(param)
        return 0.5 + 0.5 * np.sign(np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / 8))
    if kind == "checks":
        return (((yy // param) + (xx // param)) % 2).astype(np.float32)
    if kind == "dots":
        return ((np.sin(yy * 2 * np.pi / (2 * param)) * np.sin(xx * 2 * np.pi / (2 * param))) > 0.5).astype(
            np.float32)
    if kind == "noise":
        return rng.random((height, width), dtype=np.float32)
    return np.full((height, width), 0.5, dtype=np.float32)


def _paint(image: np.ndarray, mask: np.ndarray, colour, kind, param, rng) -> None:
    height, width = mask.shape
    jitter = rng.normal(0, 20, size=3)
    base = np.clip(np.asarray(colour, np.float32) + jitter, 0, 255)
    texture = _texture(kind, param, height, width, rng)[..., None]
    layer = base * (0.65 + 0.5 * texture)
    image[mask] = layer[mask]


def _random_shape(draw: ImageDraw.ImageDraw, height: int, width: int, rng) -> None:
    cx, cy = rng.integers(0, width), rng.integers(height // 4, height)
    w, h = rng.integers(width // 12, width // 4), rng.integers(height // 10, height // 3)
    box = [cx - w, cy - h, cx + w, cy + h]
    kind = rng.integers(0, 3)
    if kind == 0:
        draw.rectangle(box, fill=1)
    elif kind == 1:
        draw.ellipse(box, fill=1)
    else:
        points = [(cx + w * np.cos(a), cy + h * np.sin(a)) for a in np.sort(rng.uniform(0, 2 * np.pi, 6))]
        draw.polygon(points, fill=1)


def make_scene(classes: dict, height: int, width: int, rng: np.random.Generator):
    """One (RGB uint8 image, uint8 label) pair."""
    ids = list(classes)
    ground, rest = ids[0], ids[1:]
    image = np.zeros((height, width, 3), np.float32)
    label = np.full((height, width), ground, np.uint8)
    _paint(image, np.ones((height, width), bool), *classes[ground], rng)
    boundary = np.zeros((height, width), bool)
    if 10 in classes and classes is CITYSCAPES_CLASSES:  # a sky band above the horizon
        horizon = int(height * rng.uniform(0.2, 0.4))
        sky = np.zeros((height, width), bool)
        sky[:horizon] = True
        _paint(image, sky, *classes[10], rng)
        label[sky] = 10
        rest = [c for c in rest if c != 10]
    for _ in range(rng.integers(3, 7)):
        cls = rest[rng.integers(0, len(rest))]
        canvas = Image.new("L", (width, height), 0)
        _random_shape(ImageDraw.Draw(canvas), height, width, rng)
        mask = np.asarray(canvas, bool)
        _paint(image, mask, *classes[cls], rng)
        label[mask] = cls
        grown = np.asarray(canvas.filter(ImageFilter.MaxFilter(5)))
        shrunk = np.asarray(canvas.filter(ImageFilter.MinFilter(5)))
        boundary |= grown != shrunk
    label[boundary] = IGNORE
    image += rng.normal(0, 25, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), label


def write_cityscapes(root: str, counts: dict, height: int, width: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        cities = CITIES[split]
        for i in range(n):
            city = cities[i % len(cities)]
            stem = f"{city}_{i:06d}_000019"
            image, label = make_scene(CITYSCAPES_CLASSES, height, width, rng)
            img_dir = os.path.join(root, "leftImg8bit", split, city)
            gt_dir = os.path.join(root, "gtFine", split, city)
            os.makedirs(img_dir, exist_ok=True)
            os.makedirs(gt_dir, exist_ok=True)
            Image.fromarray(image).save(os.path.join(img_dir, f"{stem}_leftImg8bit.png"))
            Image.fromarray(label).save(os.path.join(gt_dir, f"{stem}_gtFine_labelTrainIds.png"))


def voc_palette() -> list[int]:
    """The standard Pascal VOC colour map (bit-interleaved class index)."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


def write_voc(root: str, counts: dict, height: int, width: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    base = os.path.join(root, "VOCdevkit", "VOC2012")
    dirs = {name: os.path.join(base, name) for name in
            ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation")}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    palette = voc_palette()
    lists = {}
    for split, n in counts.items():
        names = []
        for i in range(n):
            name = f"2007_{split[0]}{i:05d}"
            image, label = make_scene(VOC_CLASSES, height, width, rng)
            Image.fromarray(image).save(os.path.join(dirs["JPEGImages"], f"{name}.jpg"), quality=95)
            indexed = Image.fromarray(label, mode="P")
            indexed.putpalette(palette)
            indexed.save(os.path.join(dirs["SegmentationClass"], f"{name}.png"))
            Image.fromarray(label).save(os.path.join(dirs["SegmentationClassAug"], f"{name}.png"))
            names.append(name)
        lists[split] = names
    lists["trainval"] = lists.get("train", []) + lists.get("val", [])
    lists["aug"] = lists.get("train", [])  # SBD-style extra training list
    for split, names in lists.items():
        with open(os.path.join(dirs["ImageSets/Segmentation"], f"{split}.txt"), "w") as f:
            f.write("".join(f"{n}\n" for n in names))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("layout", choices=["cityscapes", "voc"])
    parser.add_argument("out_dir")
    parser.add_argument("--train", type=int, default=48, help="number of training images")
    parser.add_argument("--val", type=int, default=12, help="number of validation images")
    parser.add_argument("--size", default=None, help="HxW (default 256x512 cityscapes, 256x320 voc)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    size = args.size or ("256x512" if args.layout == "cityscapes" else "256x320")
    try:
        height, width = (int(v) for v in size.lower().split("x"))
    except ValueError:
        sys.exit(f"--size must look like 256x512, got {size!r}")
    counts = {"train": args.train, "val": args.val}
    writer = write_cityscapes if args.layout == "cityscapes" else write_voc
    writer(args.out_dir, counts, height, width, args.seed)
    print(f"wrote {args.train} train + {args.val} val {args.layout} images ({height}x{width}) to {args.out_dir}")


if __name__ == "__main__":
    main()
