"""mmseg's ASPP formula as it stands, for graph capture (ONNX export, tracing)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def is_capturing() -> bool:
    """Whether the forward is being recorded as a graph rather than run.

    True under either ``torch.onnx.export`` exporter (TorchScript or dynamo),
    ``torch.jit.trace`` and ``torch.export``; False under ``torch.compile``,
    which handles the fast path's shape-dependent Python itself.
    """
    exporting = getattr(torch.compiler, "is_exporting", None)
    return (
        torch.onnx.is_in_onnx_export()
        or torch.jit.is_tracing()
        or (exporting is not None and exporting())
    )


def aspp_features_reference(
    x: Tensor,
    pool_layer: nn.Module,
    branches: Sequence[nn.Module],
    bottleneck: nn.Module,
) -> Tensor:
    """``bottleneck(cat(broadcast(pool_layer(avgpool(x))), *[b(x) for b in branches]))``.

    The same function and parameters as the fast path, with nothing chosen
    from the map size, so a captured graph stays valid for any input size.

    Args:
        x: Feature map (N, C_in, H, W).
        pool_layer: 1x1 ConvModule applied to the globally pooled features.
        branches: One ConvModule per rate, run whole (3x3 kernel, padding = rate).
        bottleneck: 3x3 ConvModule fusing the concatenated branches.
    """
    pooled = pool_layer(F.adaptive_avg_pool2d(x, 1))
    # mmseg resizes the 1x1 map bilinearly to H x W, which is a broadcast.
    outs = [pooled.expand(-1, -1, x.shape[2], x.shape[3])]
    outs.extend(branch(x) for branch in branches)
    return bottleneck(torch.cat(outs, dim=1))
