# Upstream baseline: identical to ../deeplabv3/deeplabv3_r50-d8_4xb2-80k_cityscapes-512x1024.py except that the decode
# head is mmseg's own ASPPHead and the backbone's convolutions plain nn.Conv2d.
_base_ = '../deeplabv3/deeplabv3_r50-d8_4xb2-80k_cityscapes-512x1024.py'
model = dict(backbone=dict(conv_cfg=None), decode_head=dict(type='ASPPHead'))
