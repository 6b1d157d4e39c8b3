"""Loading transforms that name the file when an image or label map is unusable.

mmseg's loaders fail deep inside (``'NoneType' object has no attribute
'squeeze'``) on a corrupt file, and out-of-range label values only surface as
an index error in the loss or a reshape error in the metric. These subclasses
raise one :class:`DatasetError` naming the file and what is wrong with it.
"""
from __future__ import annotations

import numpy as np
from mmcv.transforms import LoadImageFromFile
from mmseg.datasets.transforms import LoadAnnotations

from ..errors import MmsegAsppError
from ..registry import TRANSFORMS


class DatasetError(MmsegAsppError, ValueError):
    """A dataset file or directory is missing, unreadable or holds invalid values."""


@TRANSFORMS.register_module()
class CheckedLoadImageFromFile(LoadImageFromFile):
    """mmcv's ``LoadImageFromFile`` with an error naming an unreadable image."""

    def transform(self, results: dict) -> dict | None:
        path = results.get("img_path")
        try:
            loaded = super().transform(results)
        except Exception as err:  # decoders raise anything from AssertionError to cv2.error
            raise DatasetError(f"cannot read image {path}: {err or type(err).__name__}. "
                               f"Replace the file or remove it from the split.") from err
        if loaded is None and not self.ignore_empty:
            raise DatasetError(f"cannot read image {path}: it is empty or corrupt")
        return loaded


@TRANSFORMS.register_module()
class CheckedLoadAnnotations(LoadAnnotations):
    """mmseg's ``LoadAnnotations`` that also checks label values.

    Args:
        num_classes: Valid labels are ``0 .. num_classes - 1`` (after
            ``reduce_zero_label`` / ``label_map``); None skips the check.
        ignore_index: The one other value allowed.
        **kwargs: Passed to mmseg's ``LoadAnnotations``.
    """

    def __init__(self, num_classes: int | None = None, ignore_index: int = 255, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def _load_seg_map(self, results: dict) -> None:
        path = results.get("seg_map_path")
        try:
            super()._load_seg_map(results)
        except Exception as err:
            raise DatasetError(f"cannot read label map {path}: {err or type(err).__name__}. "
                               f"Replace the file or remove it from the split.") from err
        labels = results["gt_seg_map"]
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
