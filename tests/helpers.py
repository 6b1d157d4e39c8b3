"""Builders shared by the tests: twin heads with identical random weights."""
from __future__ import annotations

import torch
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

import mmseg_aspp  # noqa: F401  (registers mmseg_aspp.ASPPHead)


def head_cfg(impl: str, head: str = "ASPPHead", **overrides) -> dict:
    """A small head config: ``impl`` "ours" or "upstream"; ``head`` ASPPHead or DepthwiseSeparableASPPHead."""
    cfg = dict(
        type=f"mmseg_aspp.{head}" if impl == "ours" else head,
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


def twin_heads(head: str = "ASPPHead", randomized: bool = True, **overrides):
    """(ours, upstream) heads built from one config, with identical weights.

    Args:
        randomized: Random weights and BN statistics (``randomize_``); otherwise mmseg's own
            initialisation (BN an identity at first).
    """
    ours = MODELS.build(head_cfg("ours", head, **overrides))
    upstream = MODELS.build(head_cfg("upstream", head, **overrides))
    if randomized:
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


def head_step(head, inputs, train: bool, call=None, label_scale: int = 8) -> dict:
    """What one call produces: logits; in training also the loss, every gradient and BN buffer.

    Args:
        call: What computes the logits from ``inputs`` (e.g. a compiled ``head``); ``head`` itself by default.
        label_scale: Labels are this many times the size of ``inputs[0]`` (the logits are resized to them).
    """
    call = head if call is None else call
    head.train(train)
    if not train:
        with torch.no_grad():
            return {"logits": call(inputs)}
    inputs = [x.clone().requires_grad_() for x in inputs]
    batch, _, height, width = inputs[0].shape
    samples = seg_samples(batch, height * label_scale, width * label_scale, num_classes=head.num_classes)
    torch.manual_seed(0)  # the same Dropout2d mask for heads of one dtype
    logits = call(inputs)
    losses = head.loss_by_feat(logits, samples)
    losses["loss_ce"].backward()
    out = {"logits": logits.detach(), "loss_ce": losses["loss_ce"].detach()}
    out.update({f"input{i}.grad": x.grad for i, x in enumerate(inputs) if x.grad is not None})
    out.update({f"{name}.grad": p.grad for name, p in head.named_parameters()})
    out.update({name: b.clone() for name, b in head.named_buffers() if b.is_floating_point()})
    return out


# ----------------------------------------------------------------- comparing to float64 (fp32: float_error.py)
# Relative to the largest reference magnitude: float64 rounding of these small heads stays
# below 1e-14; a wrong tap moves results by whole percents.
FLOAT64_TOLERANCE = 1e-12


def assert_float64_equal(ours: dict, reference: dict, tolerance: float = FLOAT64_TOLERANCE) -> None:
    """Every tensor of ``ours`` equals ``reference`` up to float64 rounding (``tolerance`` of its scale)."""
    assert ours.keys() == reference.keys()
    for name, ref in reference.items():
        value = ours[name]
        assert value.dtype == ref.dtype == torch.float64, name
        scale = ref.abs().max().item() if ref.numel() else 0.0
        error = (value - ref).abs().max().item() if ref.numel() else 0.0
        assert error <= tolerance * max(scale, 1.0), f"{name}: max error {error:.3e} (scale {scale:.3e})"
