# ./deeplabv3-cascade_r50-d16-block7-mg121_4xb2-80k_cityscapes-512x1024.py with ResNet-101 (the
# paper's Table 2 compares both depths with cascaded blocks; Table 3's multi-grid study uses
# ResNet-101).
_base_ = './deeplabv3-cascade_r50-d16-block7-mg121_4xb2-80k_cityscapes-512x1024.py'
model = dict(pretrained='open-mmlab://resnet101_v1c', backbone=dict(depth=101))
