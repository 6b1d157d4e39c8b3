# Upstream baseline: identical to ../demo/deeplabv3_r18-d8_1xb4-600it_synthetic-voc-128x128.py
# except that the decode head is mmseg's own ASPPHead and the backbone's
# convolutions plain nn.Conv2d.
_base_ = '../demo/deeplabv3_r18-d8_1xb4-600it_synthetic-voc-128x128.py'
model = dict(backbone=dict(conv_cfg=None), decode_head=dict(type='ASPPHead'))
