# ResNet-50 with block5-block7 cascaded after block4 at output stride 16, multi-grid (1, 2, 1)
# (../_base_/models/cascade_r50-d16-block7-mg121.py): the setting of the DeepLabV3 paper's Tables 2
# and 3 (block7, OS 16, its best multi-grid), here the cascade under our ASPP head (rates 6, 12, 18
# at output stride 16, as the paper's ASPP): atrous convolution in cascade and in parallel together;
# Cityscapes, our 80k schedule.
_base_ = [
    '../_base_/models/cascade_r50-d16-block7-mg121.py', '../_base_/datasets/cityscapes.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_80k.py'
]
crop_size = (512, 1024)
data_preprocessor = dict(size=crop_size)
model = dict(
    decode_head=dict(
        _delete_=True,
        type='mmseg_aspp.ASPPHead',
        in_channels=2048,
        in_index=3,
        channels=512,
        dilations=(1, 6, 12, 18),
        dropout_ratio=0.1,
        num_classes=19,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    data_preprocessor=data_preprocessor)
