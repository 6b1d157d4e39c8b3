# ResNet-50 with block5-block7 cascaded after block4 at output stride 16, multi-grid (1, 2, 1)
# (../_base_/models/cascade_r50-d16-block7-mg121.py): the setting of the DeepLabV3 paper's Tables
# 1-3, which it ran on PASCAL VOC 2012 (augmented training set), here the cascade under our ASPP
# head (rates 6, 12, 18 at output stride 16, as the paper's ASPP): atrous convolution in cascade and
# in parallel together; our 20k schedule.
_base_ = [
    '../_base_/models/cascade_r50-d16-block7-mg121.py', '../_base_/datasets/pascal_voc12_aug.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_20k.py'
]
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    decode_head=dict(
        _delete_=True,
        type='mmseg_aspp.ASPPHead',
        in_channels=2048,
        in_index=3,
        channels=512,
        dilations=(1, 6, 12, 18),
        dropout_ratio=0.1,
        num_classes=21,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(num_classes=21))
