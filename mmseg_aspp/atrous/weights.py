"""Inference-time cache of the weight views the atrous core convolves with.

Cropped kernels, channel slices of the bottleneck and channels-last copies
are views of the module's parameters that a convolution would otherwise copy
or reorder on every call (tens of MB for a 2048-channel head, which matters
on small maps). When autograd needs the view, it is returned as is; otherwise
the prepared copy is kept until the parameter changes (in-place updates bump
its version counter; replaced storage changes its data pointer).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

_cache: WeakIdKeyDictionary = WeakIdKeyDictionary()


def prepared_weight(
    weight: Tensor, index: tuple, channels_last: bool, dtype: torch.dtype | None = None
) -> Tensor:
    """``weight[index]`` laid out for convolution, cached while autograd is off.

    Args:
        weight: A parameter of the head.
        index: Tuple of slices selecting the part to use.
        channels_last: Lay the result out channels-last (for channels-last convs).
        dtype: Compute dtype (under autocast); defaults to the weight's own.
    """
    dtype = dtype or weight.dtype
    view = weight[index]
    if torch.is_grad_enabled() and weight.requires_grad:
        return view.to(dtype)
    stamp = (weight._version, weight.data_ptr(), weight.dtype, weight.device)
    key = (tuple((s.start, s.stop, s.step) for s in index), channels_last, dtype)  # slices hash from 3.12 on
    entries = _cache.setdefault(weight, {})
    hit = entries.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    prepared = view.to(dtype).contiguous(memory_format=fmt)
    entries[key] = (stamp, prepared)
    return prepared
