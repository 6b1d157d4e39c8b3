"""Builders shared by the tests: twin heads with identical random weights."""
from __future__ import annotations

import torch
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

import mmseg_aspp  # noqa: F401  (registers mmseg_aspp.ASPPHead)


def head_cfg(impl: str, **overrides) -> dict:
    cfg = dict(
        type="mmseg_aspp.ASPPHead" if impl == "ours" else "ASPPHead",
        in_channels=16,
        channels=8,
        num_classes=5,
        dilations=(1, 6, 12, 18),
        dropout_ratio=0.1,
        norm_cfg=dict(type="BN", requires_grad=True),
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
    )
    cfg.update(overrides)
    return cfg


def randomize_(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial parameters and BN statistics so no layer is an identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point():
                continue
            values = torch.randn(tensor.shape, generator=gen, dtype=tensor.dtype)
            if name.endswith("running_var"):
                values = values.abs() + 0.5
            elif tensor.dim() >= 2:
                values = values / (tensor[0].numel() ** 0.5)
            tensor.copy_(values)


def twin_heads(**overrides):
    """(ours, upstream) heads built from one config, with identical weights."""
    ours = MODELS.build(head_cfg("ours", **overrides))
    upstream = MODELS.build(head_cfg("upstream", **overrides))
    randomize_(upstream)
    missing, unexpected = ours.load_state_dict(upstream.state_dict(), strict=True)
    assert not missing and not unexpected
    return ours, upstream


def seg_samples(batch: int, height: int, width: int, num_classes: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(batch):
        label = torch.randint(0, num_classes, (1, height, width), generator=gen)
        label[:, : height // 4] = 255  # an ignore band, as real labels have
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=label)
        shape = (height, width)
        sample.set_metainfo(dict(img_shape=shape, pad_shape=shape, ori_shape=shape))
        samples.append(sample)
    return samples
