# ResNet-50 with block5-block7 cascaded after block4 at output stride 16, multi-grid (1, 2, 1)
# (../_base_/models/cascade_r50-d16-block7-mg121.py): the setting of the DeepLabV3 paper's Tables
# 1-3, which it ran on PASCAL VOC 2012 (augmented training set), here the cascade alone (a 1x1
# classifier on block7); our 20k schedule.
_base_ = [
    '../_base_/models/cascade_r50-d16-block7-mg121.py', '../_base_/datasets/pascal_voc12_aug.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_20k.py'
]
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    decode_head=dict(num_classes=21),
    auxiliary_head=dict(num_classes=21))
