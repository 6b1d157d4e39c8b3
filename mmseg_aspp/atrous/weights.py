"""Inference-time cache of the weight views the atrous core convolves with, and of
convolution weights with a following inference BatchNorm folded in.

Cropped kernels, channel slices of the bottleneck and channels-last copies
are views of the module's parameters that a convolution would otherwise copy
or reorder on every call (tens of MB for a 2048-channel head, which matters
on small maps). When autograd is on, the plain view is returned so gradients
flow to the parameter and nothing extra is held until backward; otherwise the
prepared copy is kept until the parameter changes (in-place updates bump its
version counter; replaced storage changes its data pointer).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

from .kernels.winograd import F2, F4, winograd_kernel

_cache: WeakIdKeyDictionary = WeakIdKeyDictionary()
WINOGRAD_LAYOUTS = {"winograd": F2, "winograd4": F4}  # layout name -> tile transform


def _layout(view: Tensor, layout: str) -> Tensor:
    if layout in WINOGRAD_LAYOUTS:  # (O, C, 3, 3) -> (n^2, C, O), transformed in float32 or wider
        return winograd_kernel(view, WINOGRAD_LAYOUTS[layout])
    if layout == "taps":  # (O, C, kh, kw) -> (kh * kw, C, O) for per-tap GEMMs
        out_ch, in_ch = view.shape[:2]
        return view.permute(2, 3, 1, 0).reshape(-1, in_ch, out_ch).contiguous()
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    return view.contiguous(memory_format=fmt)


def prepared_weight(weight: Tensor, index: tuple, layout: str, dtype: torch.dtype | None = None) -> Tensor:
    """``weight[index]`` laid out for convolution, cached while autograd is off.

    With autograd on (and a trainable weight) the view is returned as it is, only
    cast to ``dtype``, except for the "taps" layout.

    Args:
        weight: A parameter of the head.
        index: Tuple of slices selecting the part to use.
        layout: ``"contiguous"``, ``"channels_last"``, ``"taps"`` (per-tap matrices),
            ``"winograd"`` or ``"winograd4"`` (the F(2x2, 3x3) or F(4x4, 3x3) kernel
            transform; inference only).
        dtype: Compute dtype (under autocast); defaults to the weight's own.
    """
    dtype = dtype or weight.dtype
    view = weight[index]
    if torch.compiler.is_compiling():  # the compiled graph computes (and may hoist) the layout
        return _layout(view, layout).to(dtype)
    if torch.is_grad_enabled() and weight.requires_grad:
        # Autograd keeps a convolution's weight until backward: a view of the parameter
        # costs nothing there, a laid-out copy would be held. Convolutions reorder it
        # themselves; only per-tap GEMMs need the "taps" matrices.
        view = view.to(dtype)
        return _layout(view, layout) if layout == "taps" else view
    stamp = (weight._version, weight.data_ptr(), weight.dtype, weight.device)
    key = (tuple((s.start, s.stop, s.step) for s in index), layout, dtype)  # slices hash from 3.12 on
    entries = _cache.setdefault(weight, {})
    hit = entries.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    prepared = _layout(view, layout).to(dtype)
    entries[key] = (stamp, prepared)
    return prepared


Norm = tuple  # (running_mean, running_var, weight or None, bias or None, eps) of an inference BatchNorm


def norm_stamp(norm: Norm) -> tuple:
    """What changes when a BatchNorm's parameters or statistics do (in place or replaced)."""
    return tuple((id(t), t._version, t.data_ptr()) if isinstance(t, Tensor) else t for t in norm)


def folded(weight: Tensor, bias: Tensor | None, norm: Norm) -> tuple[Tensor, Tensor]:
    """``weight`` and ``bias`` of a convolution with the inference BatchNorm ``norm`` after it
    folded in, computed in float64 and kept until the convolution's or the norm's tensors change.

    Returns:
        ``(weight * s, (bias - running_mean) * s + norm_bias)`` with ``s = norm_weight /
        sqrt(running_var + eps)``, per output channel, in ``weight``'s dtype.
    """
    mean, var, scale, shift, eps = norm
    stamp = (weight._version, weight.data_ptr(), None if bias is None else (bias._version, bias.data_ptr()),
             norm_stamp(norm))
    entries = _cache.setdefault(weight, {})
    hit = entries.get(("folded", id(mean)))
    if hit is not None and hit[0] == stamp:
        return hit[1]
    with torch.no_grad():
        factor = (var.double() + eps).rsqrt()
        if scale is not None:
            factor = factor * scale.double()
        offset = -mean.double() if bias is None else bias.double() - mean.double()
        offset = offset * factor if shift is None else offset * factor + shift.double()
        result = ((weight.double() * factor.view(-1, *[1] * (weight.dim() - 1))).to(weight.dtype),
                  offset.to(weight.dtype))
    entries[("folded", id(mean))] = (stamp, result)
    return result


def prepared_bytes() -> int:
    """Memory held by prepared copies (views that share a parameter's storage cost nothing)."""
    return sum(
        tensor.nbytes
        for weight, entries in _cache.items()
        for _, prepared in entries.values()
        for tensor in (prepared if isinstance(prepared, tuple) else (prepared,))
        if tensor.untyped_storage().data_ptr() != weight.untyped_storage().data_ptr()
    )
