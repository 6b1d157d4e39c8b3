# VOC 2012 train + SBD augmented labels (SegmentationClassAug, aug.txt;
# see tools/dataset_converters/voc_aug.py).
_base_ = './pascal_voc12.py'
dataset_train = dict(
    type={{_base_.dataset_type}},
    data_root={{_base_.data_root}},
    data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'),
    ann_file='ImageSets/Segmentation/train.txt',
    pipeline={{_base_.train_pipeline}})
dataset_aug = dict(
    type={{_base_.dataset_type}},
    data_root={{_base_.data_root}},
    data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClassAug'),
    ann_file='ImageSets/Segmentation/aug.txt',
    pipeline={{_base_.train_pipeline}})
train_dataloader = dict(
    dataset=dict(_delete_=True, type='ConcatDataset', datasets=[dataset_train, dataset_aug]))
