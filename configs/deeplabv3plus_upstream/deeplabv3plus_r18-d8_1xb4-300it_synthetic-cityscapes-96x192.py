# Upstream baseline: identical to ../demo/deeplabv3plus_r18-d8_1xb4-300it_synthetic-cityscapes-96x192.py
# except that the decode head is mmseg's own DepthwiseSeparableASPPHead and the
# backbone's convolutions plain nn.Conv2d.
_base_ = '../demo/deeplabv3plus_r18-d8_1xb4-300it_synthetic-cityscapes-96x192.py'
model = dict(backbone=dict(conv_cfg=None), decode_head=dict(type='DepthwiseSeparableASPPHead'))
