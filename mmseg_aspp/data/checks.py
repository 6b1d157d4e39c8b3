"""Loading checks that name the file when an image or label map is unusable.

mmseg's loaders fail deep inside (``'NoneType' object has no attribute
'squeeze'``) on a corrupt file, and out-of-range label values only surface as
an index error in the loss or a reshape error in the metric. The checks wrap
the loading steps of a dataset's *built* pipeline, so configs keep mmseg's own
transform names (``LoadImageFromFile``, ``LoadAnnotations``), which mmseg's
``inference_model`` and ``MMSegInferencer`` look for by name.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from mmcv.transforms import LoadAnnotations, LoadImageFromFile

from ..errors import MmsegAsppError


class DatasetError(MmsegAsppError, ValueError):
    """A dataset file or directory is missing, unreadable or holds invalid values."""


class CheckedLoading:
    """A loading transform whose failures name the file, and whose labels are range-checked.

    Args:
        transform: A built ``LoadImageFromFile`` or ``LoadAnnotations`` (or subclass).
        num_classes: Valid labels are ``0 .. num_classes - 1`` (after the
            loader's ``reduce_zero_label`` / ``label_map``); None skips the check.
        ignore_index: The one other label value allowed.
    """

    def __init__(self, transform: Any, num_classes: int | None = None, ignore_index: int = 255) -> None:
        self.transform = transform
        self.labels = isinstance(transform, LoadAnnotations)
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def __call__(self, results: dict) -> dict | None:
        what, path = ("label map", results.get("seg_map_path")) if self.labels else ("image", results.get("img_path"))
        try:
            loaded = self.transform(results)
        except Exception as err:  # decoders raise anything from AssertionError to cv2.error
            raise DatasetError(f"cannot read {what} {path}: {err or type(err).__name__}. "
                               f"Replace the file or remove it from the split.") from err
        if loaded is None and not getattr(self.transform, "ignore_empty", False):
            raise DatasetError(f"cannot read {what} {path}: it is empty or corrupt")
        if self.labels and loaded is not None and "gt_seg_map" in loaded:
            self._check_labels(loaded["gt_seg_map"], path)
        return loaded

    def _check_labels(self, labels: np.ndarray, path: str) -> None:
        if labels.ndim != 2:
            raise DatasetError(
                f"label map {path} has shape {labels.shape}; expected one channel of class "
                f"indices (for Cityscapes use the *_labelTrainIds.png files)")
        if self.num_classes is None:
            return
        counts = np.bincount(labels.ravel(), minlength=256)
        bad = [int(v) for v in np.flatnonzero(counts) if v >= self.num_classes and v != self.ignore_index]
        if bad:
            raise DatasetError(
                f"label map {path} holds values {bad} outside 0..{self.num_classes - 1} "
                f"(num_classes={self.num_classes}) and other than the ignore index "
                f"{self.ignore_index}; convert the labels (see tools/dataset_converters) or fix num_classes")

    def __repr__(self) -> str:
        return f"CheckedLoading({self.transform!r})"


def _leaf_datasets(dataset: Any):
    """The datasets under wrappers such as ConcatDataset, RepeatDataset, ClassBalancedDataset."""
    if hasattr(dataset, "datasets"):
        for child in dataset.datasets:
            yield from _leaf_datasets(child)
    elif hasattr(dataset, "dataset"):
        yield from _leaf_datasets(dataset.dataset)
    else:
        yield dataset


def _wrap_loaders(transforms: list, num_classes: int | None, ignore_index: int) -> None:
    """Wrap every loader in a list of transforms, descending into composite transforms."""
    for i, transform in enumerate(transforms):
        if isinstance(transform, (LoadImageFromFile, LoadAnnotations)):
            transforms[i] = CheckedLoading(transform, num_classes, ignore_index)
            continue
        for attr in ("transforms", "subroutines"):  # Compose, RandomChoice; TestTimeAug
            children = getattr(transform, attr, None)
            if isinstance(children, list):
                _wrap_loaders(children, num_classes, ignore_index)


def check_loading(dataset: Any) -> None:
    """Wrap the loaders of ``dataset``'s pipelines (in place, once) with :class:`CheckedLoading`.

    The number of classes and the ignore index come from each dataset itself.
    """
    for leaf in _leaf_datasets(dataset):
        pipeline = getattr(leaf, "pipeline", None)
        if pipeline is None or getattr(pipeline, "_loading_checked", False):
            continue
        classes = (getattr(leaf, "metainfo", None) or {}).get("classes")
        _wrap_loaders(pipeline.transforms, len(classes) if classes else None, getattr(leaf, "ignore_index", 255))
        pipeline._loading_checked = True
