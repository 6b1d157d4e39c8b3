"""Builders shared by the tests: twin heads with identical random weights."""
from __future__ import annotations

import copy

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


def twin_heads(head: str = "ASPPHead", **overrides):
    """(ours, upstream) heads built from one config, with identical weights."""
    ours = MODELS.build(head_cfg("ours", head, **overrides))
    upstream = MODELS.build(head_cfg("upstream", head, **overrides))
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


def head_step(head, inputs, train: bool, call=None) -> dict:
    """What one call produces: logits; in training also the loss, every gradient and BN buffer.

    Args:
        call: What computes the logits from ``inputs`` (e.g. a compiled ``head``); ``head`` itself by default.
    """
    call = head if call is None else call
    head.train(train)
    if not train:
        with torch.no_grad():
            return {"logits": call(inputs)}
    inputs = [x.clone().requires_grad_() for x in inputs]
    batch, _, height, width = inputs[0].shape
    samples = seg_samples(batch, height * 8, width * 8, num_classes=head.num_classes)
    torch.manual_seed(0)  # the same Dropout2d mask for heads of one dtype
    logits = call(inputs)
    losses = head.loss_by_feat(logits, samples)
    losses["loss_ce"].backward()
    out = {"logits": logits.detach(), "loss_ce": losses["loss_ce"].detach()}
    out.update({f"input{i}.grad": x.grad for i, x in enumerate(inputs) if x.grad is not None})
    out.update({f"{name}.grad": p.grad for name, p in head.named_parameters()})
    out.update({name: b.clone() for name, b in head.named_buffers() if b.is_floating_point()})
    return out


# ----------------------------------------------------------------- comparing to float64
# Relative to the largest reference magnitude: float64 rounding of these small heads stays
# below 1e-14; a wrong tap moves results by whole percents.
FLOAT64_TOLERANCE = 1e-12
# fp32 results are judged by their distance from the float64 result. The float error of a
# tensor is the larger of mmseg's own fp32 distance from it and how far the float64 result
# moves when weights and inputs are perturbed at fp32 rounding (2**-24 relative): gradients
# behind a BatchNorm over two values are ill-conditioned, and there any correct fp32 result
# lands that far off. Ours may be FP32_ERROR_FACTOR times that away, plus a floor of a few
# dozen fp32 roundings; a wrong tap moves results by whole percents.
FP32_ERROR_FACTOR = 5.0
FP32_ERROR_FLOOR = 2e-6


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """||value - reference|| / ||reference||, in float64."""
    reference = reference.double()
    scale = reference.norm().item() or 1.0
    return (value.double() - reference).norm().item() / scale


def assert_float64_equal(ours: dict, reference: dict) -> None:
    """Every tensor of ``ours`` equals ``reference`` up to float64 rounding."""
    assert ours.keys() == reference.keys()
    for name, ref in reference.items():
        value = ours[name]
        assert value.dtype == ref.dtype == torch.float64, name
        scale = ref.abs().max().item() if ref.numel() else 0.0
        error = (value - ref).abs().max().item() if ref.numel() else 0.0
        assert error <= FLOAT64_TOLERANCE * max(scale, 1.0), f"{name}: max error {error:.3e} (scale {scale:.3e})"


def perturbed_at_fp32_rounding(module: torch.nn.Module, inputs: list, seed: int = 0):
    """A copy of ``module`` and ``inputs`` with every value scaled by (1 + 2**-24 * N(0, 1))."""
    gen = torch.Generator().manual_seed(seed)

    def jitter(t: torch.Tensor) -> torch.Tensor:
        return t * (1 + 2**-24 * torch.randn(t.shape, generator=gen, dtype=t.dtype))

    module = copy.deepcopy(module)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(jitter(p))
    return module, [jitter(x) for x in inputs]


def assert_fp32_as_close_as_upstream(ours: dict, upstream: dict, reference: dict, perturbed: dict) -> None:
    """Ours (fp32) lies within a few float errors of the float64 ``reference``.

    Args:
        ours, upstream: fp32 results of the two heads.
        reference: mmseg's head in float64 on the same weights and inputs.
        perturbed: the same after ``perturbed_at_fp32_rounding``.
    """
    assert ours.keys() == upstream.keys() == reference.keys() == perturbed.keys()
    for name, ref in reference.items():
        ours_error = relative_error(ours[name], ref)
        float_error = max(relative_error(upstream[name], ref), relative_error(perturbed[name], ref))
        bound = FP32_ERROR_FACTOR * float_error + FP32_ERROR_FLOOR
        assert ours_error <= bound, (
            f"{name}: relative error {ours_error:.3e}, float error {float_error:.3e} (bound {bound:.3e})")
