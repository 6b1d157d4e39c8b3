#!/usr/bin/env python
"""Convert Cityscapes polygon annotations to ``*_gtFine_labelTrainIds.png``.

Expects the official layout (``leftImg8bit/``, ``gtFine/`` with
``*_gtFine_polygons.json``) and needs ``pip install cityscapesscripts``.

    python tools/dataset_converters/cityscapes.py data/cityscapes --nproc 8
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
from multiprocessing import Pool


def _convert(json_file: str) -> None:
    from cityscapesscripts.preparation.json2labelImg import json2labelImg

    json2labelImg(json_file, json_file.replace("_polygons.json", "_labelTrainIds.png"), "trainIds")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cityscapes_path", help="folder holding leftImg8bit/ and gtFine/")
    parser.add_argument("--gt-dir", default="gtFine")
    parser.add_argument("--nproc", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        import cityscapesscripts  # noqa: F401
    except ImportError:
        sys.exit("this converter needs cityscapesscripts: pip install cityscapesscripts")
    gt_dir = os.path.join(args.cityscapes_path, args.gt_dir)
    files = sorted(glob.glob(os.path.join(gt_dir, "**", "*_gtFine_polygons.json"), recursive=True))
    if not files:
        sys.exit(f"no *_gtFine_polygons.json under {gt_dir}: is this the Cityscapes root?")
    with Pool(args.nproc) as pool:
        for done, _ in enumerate(pool.imap_unordered(_convert, files), 1):
            print(f"\r{done}/{len(files)} label images", end="", flush=True)
    print()
    for split in ("train", "val", "test"):
        names = sorted(
            os.path.relpath(f, os.path.join(gt_dir, split)).replace("_gtFine_polygons.json", "")
            for f in files if os.sep + split + os.sep in f
        )
        with open(os.path.join(args.cityscapes_path, f"{split}.txt"), "w") as out:
            out.write("".join(f"{n}\n" for n in names))


if __name__ == "__main__":
    main()
