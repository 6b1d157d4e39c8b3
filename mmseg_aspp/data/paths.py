"""Check a config's dataset folders before a run starts, not minutes into it."""
from __future__ import annotations

import os
from typing import Iterable, Iterator

from .checks import DatasetError


def _datasets(node: dict, where: str) -> Iterator[tuple[dict, str]]:
    """Leaf dataset configs under wrappers such as ConcatDataset and RepeatDataset."""
    if "datasets" in node:
        for i, child in enumerate(node["datasets"]):
            yield from _datasets(child, f"{where}.datasets.{i}")
    elif "dataset" in node:
        yield from _datasets(node["dataset"], f"{where}.dataset")
    else:
        yield node, where


def check_dataset_paths(cfg, loaders: Iterable[str]) -> None:
    """Raise :class:`DatasetError` if a dataset folder or split file of ``loaders`` is missing.

    Args:
        cfg: The full config.
        loaders: Names such as ``"train_dataloader"``; absent ones are skipped.
    """
    for loader in loaders:
        if not cfg.get(loader):
            continue
        for dataset, where in _datasets(cfg[loader]["dataset"], f"{loader}.dataset"):
            root = dataset.get("data_root") or ""
            wanted = [(f"{where}.data_prefix.{k}", v) for k, v in (dataset.get("data_prefix") or {}).items() if v]
            if dataset.get("ann_file"):
                wanted.append((f"{where}.ann_file", dataset["ann_file"]))
            for name, rel in wanted:
                path = os.path.join(root, rel)
                if not os.path.exists(path):
                    raise DatasetError(
                        f"dataset path not found: {path} ({name} under data_root={root!r}). "
                        f"Prepare the data as the README's 'Data preparation' section says, or point "
                        f"the config at it with --cfg-options {where}.data_root=/path/to/data")
