# Upstream baseline: identical to ../deeplabv3plus/deeplabv3plus_r101-d8_4xb4-40k_voc12aug-512x512.py except that the decode
# head is mmseg's own DepthwiseSeparableASPPHead and the backbone's convolutions plain nn.Conv2d.
_base_ = '../deeplabv3plus/deeplabv3plus_r101-d8_4xb4-40k_voc12aug-512x512.py'
model = dict(backbone=dict(conv_cfg=None), decode_head=dict(type='DepthwiseSeparableASPPHead'))
