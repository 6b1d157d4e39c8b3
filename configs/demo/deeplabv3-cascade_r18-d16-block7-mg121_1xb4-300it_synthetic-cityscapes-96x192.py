# CPU demo of the cascaded model (DeepLabV3 Section 3.2): the quarter-width ResNet-18 of the
# DeepLabV3 demo with block5-block7 (copies of its block4) after block4 at output stride 16,
# multi-grid (1, 2, 1), under our ASPP head with the paper's output-stride-16 rates. At this crop
# the deepest blocks run rates of 16 and 32 on a 6x12 map: tools/analyze_rates.py shows which
# of their taps read only padding.
_base_ = './deeplabv3_r18-d8_1xb4-300it_synthetic-cityscapes-96x192.py'
model = dict(
    backbone=dict(
        type='mmseg_aspp.CascadedResNetV1c',
        dilations=(1, 1, 1, 2),
        strides=(1, 2, 2, 1),
        multi_grid=(2, 4, 2),  # mmseg's absolute unit rates: the paper's (1, 2, 1) at block4's rate 2
        extra_blocks=3,
        extra_multi_grid=(1, 2, 1)),
    decode_head=dict(dilations=(1, 6, 12, 18)))
