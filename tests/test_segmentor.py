"""A whole EncoderDecoder with our head equals one with mmseg's head."""
import copy

import torch
from mmengine.config import ConfigDict
from mmseg.registry import MODELS

from helpers import head_cfg, randomize_, seg_samples


def _segmentor_cfg(impl: str) -> ConfigDict:
    norm_cfg = dict(type="BN", requires_grad=True)
    head = head_cfg(impl, in_channels=64, channels=16, num_classes=4, dilations=(1, 2, 3))
    return ConfigDict(
        type="EncoderDecoder",
        data_preprocessor=dict(
            type="SegDataPreProcessor", mean=[123.675, 116.28, 103.53],
            std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0, seg_pad_val=255,
            size=(48, 40),
        ),
        backbone=dict(
            type="ResNetV1c", depth=18, stem_channels=8, base_channels=8, num_stages=4,
            out_indices=(0, 1, 2, 3), dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1),
            norm_cfg=norm_cfg, contract_dilation=True,
        ),
        decode_head=head,
        auxiliary_head=dict(
            type="FCNHead", in_channels=32, in_index=2, channels=8, num_convs=1,
            concat_input=False, dropout_ratio=0.1, num_classes=4, norm_cfg=norm_cfg,
            align_corners=False,
            loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4),
        ),
        train_cfg=dict(),
        test_cfg=dict(mode="whole"),
    )


def _twin_segmentors():
    ours = MODELS.build(_segmentor_cfg("ours"))
    upstream = MODELS.build(_segmentor_cfg("upstream"))
    randomize_(upstream, seed=5)
    ours.load_state_dict(upstream.state_dict(), strict=True)
    return ours, upstream


def _batch(batch=2, height=48, width=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = [torch.randint(0, 256, (3, height, width), generator=gen, dtype=torch.uint8)
              for _ in range(batch)]
    return dict(inputs=images, data_samples=seg_samples(batch, height, width, num_classes=4))


def test_predict_equals_upstream():
    ours, upstream = _twin_segmentors()
    ours.eval(), upstream.eval()
    data = _batch()
    with torch.no_grad():
        pred_ours = ours.test_step(copy.deepcopy(data))
        pred_up = upstream.test_step(copy.deepcopy(data))
    for a, b in zip(pred_ours, pred_up):
        torch.testing.assert_close(a.seg_logits.data, b.seg_logits.data, atol=1e-5, rtol=0)
        assert torch.equal(a.pred_sem_seg.data, b.pred_sem_seg.data)


def test_tensor_mode_and_train_step_match_upstream():
    from mmengine.optim import OptimWrapper

    ours, upstream = _twin_segmentors()
    data = _batch()
    with torch.no_grad():
        ours.eval(), upstream.eval()
        inputs = ours.data_preprocessor(copy.deepcopy(data))["inputs"]
        torch.testing.assert_close(ours(inputs, mode="tensor"), upstream(inputs, mode="tensor"),
                                   atol=1e-5, rtol=0)
    logs = []
    for model in (ours, upstream):
        model.train()
        wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
        torch.manual_seed(0)
        logs.append(model.train_step(copy.deepcopy(data), wrapper))
    assert logs[0].keys() == logs[1].keys()
    for key in logs[1]:
        torch.testing.assert_close(logs[0][key], logs[1][key], atol=1e-5, rtol=1e-5)
    for (name, p_ours), p_up in zip(ours.named_parameters(), upstream.parameters()):
        torch.testing.assert_close(p_ours, p_up, atol=1e-6, rtol=1e-5, msg=name)
