# DeepLabV3 Section 3.2, "going deeper with atrous convolution": ResNet-50 with block5, block6
# and block7 (copies of block4) cascaded after block4 at output stride 16, rates 2/4/8/16 for
# blocks 4-7 with multi-grid (1, 2, 1) inside each, and a 1x1 classifier on block7 (the cascade
# alone, no ASPP). Every convolution is mmseg_aspp.Conv2d, as in our other recipes.
_base_ = './deeplabv3_r50-d8.py'
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    backbone=dict(
        type='mmseg_aspp.CascadedResNetV1c',
        dilations=(1, 1, 1, 2),
        strides=(1, 2, 2, 1),
        multi_grid=(2, 4, 2),  # mmseg's absolute unit rates: the paper's (1, 2, 1) at block4's rate 2
        extra_blocks=3,
        extra_multi_grid=(1, 2, 1)),
    decode_head=dict(
        _delete_=True,
        type='FCNHead',
        in_channels=2048,
        in_index=3,
        channels=2048,
        num_convs=0,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=19,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)))
