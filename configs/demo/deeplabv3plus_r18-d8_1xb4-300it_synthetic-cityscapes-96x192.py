# CPU demo of DeepLabV3+: the DeepLabV3 demo with the depthwise-separable ASPP head and the
# decoder over the stride-4 features (16 channels of the quarter-width ResNet-18, reduced to 8).
_base_ = './deeplabv3_r18-d8_1xb4-300it_synthetic-cityscapes-96x192.py'
model = dict(decode_head=dict(type='mmseg_aspp.DepthwiseSeparableASPPHead', c1_in_channels=16, c1_channels=8))
