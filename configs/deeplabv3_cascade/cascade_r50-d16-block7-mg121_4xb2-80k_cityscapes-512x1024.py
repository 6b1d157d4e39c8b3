# ResNet-50 with block5-block7 cascaded after block4 at output stride 16, multi-grid (1, 2, 1)
# (../_base_/models/cascade_r50-d16-block7-mg121.py): the setting of the DeepLabV3 paper's Tables 2
# and 3 (block7, OS 16, its best multi-grid), here the cascade alone (a 1x1 classifier on block7);
# Cityscapes, our 80k schedule.
_base_ = [
    '../_base_/models/cascade_r50-d16-block7-mg121.py', '../_base_/datasets/cityscapes.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_80k.py'
]
crop_size = (512, 1024)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor)
