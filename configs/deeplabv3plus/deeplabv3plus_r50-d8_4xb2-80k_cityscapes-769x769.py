# DeepLabV3+: the DeepLabV3 recipe below with the depthwise-separable ASPP head and the decoder
# over the backbone's stride-4 output (256 channels, reduced to 48).
_base_ = '../deeplabv3/deeplabv3_r50-d8_4xb2-80k_cityscapes-769x769.py'
model = dict(decode_head=dict(type='mmseg_aspp.DepthwiseSeparableASPPHead', c1_in_channels=256, c1_channels=48))
