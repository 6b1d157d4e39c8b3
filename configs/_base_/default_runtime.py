default_scope = 'mmseg'
# Safe checkpoint loading, checked data, atomic checkpoints and bitwise resume, also
# under mmseg's own tools/train.py (see mmseg_aspp/runner.py). mmseg's tools/test.py
# builds a plain Runner; the hooks below give it the checkpoint and data checks.
runner_type = 'mmseg_aspp.ReliableRunner'
custom_hooks = [dict(type='mmseg_aspp.CheckpointGuardHook'), dict(type='mmseg_aspp.DataCheckHook')]
env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
tta_model = dict(type='SegTTAModel')
randomness = dict(seed=0)  # fixed so a resumed run repeats the uninterrupted one
