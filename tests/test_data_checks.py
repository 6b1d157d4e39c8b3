"""Checked loading and dataset path checks name the file and the problem."""
import cv2
import numpy as np
import pytest
from mmcv.transforms import LoadImageFromFile
from mmengine.config import Config
from mmseg.datasets.transforms import LoadAnnotations

from mmseg_aspp.data import CheckedLoading, DatasetError, check_dataset_paths, check_loading


def CheckedLoadImageFromFile():
    return CheckedLoading(LoadImageFromFile())


def CheckedLoadAnnotations(num_classes=None, **kwargs):
    return CheckedLoading(LoadAnnotations(**kwargs), num_classes)


def _label_results(path, **extra):
    return dict(seg_map_path=str(path), reduce_zero_label=False, seg_fields=[], **extra)


def test_image_loader_names_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    with pytest.raises(DatasetError, match=f"cannot read image {bad}"):
        CheckedLoadImageFromFile()(dict(img_path=str(bad)))
    missing = tmp_path / "missing.png"
    with pytest.raises(DatasetError, match=f"cannot read image {missing}"):
        CheckedLoadImageFromFile()(dict(img_path=str(missing)))
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.zeros((4, 5, 3), np.uint8))
    assert CheckedLoadImageFromFile()(dict(img_path=str(good)))["img"].shape == (4, 5, 3)


def test_label_loader_checks_readability_channels_and_values(tmp_path):
    loader = CheckedLoadAnnotations(num_classes=19)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=f"cannot read label map {bad}"):
        loader(_label_results(bad))

    rgb = tmp_path / "rgb.png"
    cv2.imwrite(str(rgb), np.stack([np.arange(12, dtype=np.uint8).reshape(3, 4)] * 3, axis=-1))
    with pytest.raises(DatasetError, match=r"has shape \(3, 4, 3\).*labelTrainIds"):
        loader(_label_results(rgb))

    labels = np.array([[0, 18, 255], [19, 33, 2]], np.uint8)
    out_of_range = tmp_path / "range.png"
    cv2.imwrite(str(out_of_range), labels)
    with pytest.raises(DatasetError, match=rf"{out_of_range} holds values \[19, 33\] outside 0..18"):
        loader(_label_results(out_of_range))
    assert CheckedLoadAnnotations(num_classes=34)(_label_results(out_of_range))["gt_seg_map"].max() == 255
    assert CheckedLoadAnnotations()(_label_results(out_of_range)) is not None  # no num_classes: no check


def test_values_are_checked_after_reduce_zero_label(tmp_path):
    path = tmp_path / "ade.png"
    cv2.imwrite(str(path), np.array([[0, 1, 150], [0, 1, 150]], np.uint8))  # ADE20K style: 0 is "other"
    results = CheckedLoadAnnotations(num_classes=150, reduce_zero_label=True)(
        dict(seg_map_path=str(path), reduce_zero_label=True, seg_fields=[]))
    assert results["gt_seg_map"].tolist() == [[255, 0, 149]] * 2


def test_dataset_paths_are_checked_through_dataset_wrappers(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "ann").mkdir()
    (tmp_path / "train.txt").write_text("a\n")
    leaf = dict(data_root=str(tmp_path), data_prefix=dict(img_path="img", seg_map_path="ann"))
    cfg = Config(dict(
        train_dataloader=dict(dataset=dict(type="ConcatDataset", datasets=[
            dict(leaf, ann_file="train.txt"),
            dict(type="RepeatDataset", dataset=dict(leaf, ann_file="aug.txt")),
        ])),
        val_dataloader=dict(dataset=leaf),
    ))
    check_dataset_paths(cfg, ("val_dataloader", "test_dataloader"))  # absent loaders are skipped
    with pytest.raises(DatasetError, match=r"aug.txt \(train_dataloader.dataset.datasets.1.dataset.ann_file"):
        check_dataset_paths(cfg, ("train_dataloader",))


def test_dataset_pipelines_get_checked_loaders_with_the_datasets_classes(data_root):
    """Configs keep mmseg's transform names; the built pipelines, TTA included, are wrapped."""
    from mmseg.registry import DATASETS

    tta = dict(type="TestTimeAug", transforms=[[dict(type="LoadAnnotations")], [dict(type="PackSegInputs")]])
    dataset = DATASETS.build(dict(
        type="ConcatDataset", datasets=[dict(
            type="CityscapesDataset", data_root=str(data_root / "cityscapes"),
            data_prefix=dict(img_path="leftImg8bit/train", seg_map_path="gtFine/train"),
            pipeline=[dict(type="LoadImageFromFile"), tta])]))
    check_loading(dataset)
    check_loading(dataset)  # idempotent
    pipeline = dataset.datasets[0].pipeline
    image_loader = pipeline.transforms[0]
    label_loader = pipeline.transforms[1].subroutines[0].transforms[0]
    assert isinstance(image_loader, CheckedLoading) and isinstance(image_loader.transform, LoadImageFromFile)
    assert isinstance(label_loader, CheckedLoading) and isinstance(label_loader.transform, LoadAnnotations)
    assert (label_loader.num_classes, label_loader.ignore_index) == (19, 255)  # from CityscapesDataset
    assert dataset[0]["inputs"]  # still loads
