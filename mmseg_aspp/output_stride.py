"""Switch a DeepLabV3 config between output strides (DeepLabV3, Sec. 4.1 and 4.2).

The paper trains at output stride 16 with rates (6, 12, 18) and evaluates the
same weights at output stride 8 with rates doubled. Changing the stride only
turns ResNet stage strides into dilations and rescales the ASPP rates; no
parameter changes shape, so the checkpoint loads unchanged.
"""
from __future__ import annotations

from typing import Sequence

RESNET_STEM_STRIDE = 4
RESNET_STAGE_STRIDES = (1, 2, 2, 2)
VALID_OUTPUT_STRIDES = (8, 16, 32)


def resnet_output_stride(strides: Sequence[int]) -> int:
    """Output stride of a ResNet with these stage strides (the stem divides by 4)."""
    total = RESNET_STEM_STRIDE
    for stride in strides:
        total *= stride
    return total


def resnet_strides_and_dilations(output_stride: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Stage strides and dilations that stop downsampling at ``output_stride``.

    Each stage stride that would take the network past ``output_stride`` becomes
    a dilation of that stage and of every later one (OS8: strides (1, 2, 1, 1),
    dilations (1, 1, 2, 4); OS16: (1, 2, 2, 1), (1, 1, 1, 2)).
    """
    if output_stride not in VALID_OUTPUT_STRIDES:
        raise ValueError(f"output stride must be one of {VALID_OUTPUT_STRIDES}; got {output_stride!r}")
    strides, dilations = [], []
    total, dilation = RESNET_STEM_STRIDE, 1
    for stride in RESNET_STAGE_STRIDES:
        if total * stride > output_stride:
            dilation *= stride
            stride = 1
        total *= stride
        strides.append(stride)
        dilations.append(dilation)
    return tuple(strides), tuple(dilations)


def set_output_stride(model_cfg: dict, output_stride: int) -> int:
    """Change a segmentor config's output stride in place; returns the previous one.

    The backbone (a ResNet-family config with four ``strides``/``dilations``)
    gets the new stage strides and dilations, and its multi-grid unit rates scale
    with them (blocks cascaded after block4 follow block4's rate); the decode
    head's rates, if it has any, scale by
    ``old / new``: through its ``output_stride`` when it has one (mmseg_aspp's
    head), else by rewriting ``dilations`` (also works for mmseg's head).

    Args:
        model_cfg: ``cfg.model`` of a DeepLabV3-style segmentor.
        output_stride: 8, 16 or 32.
    """
    backbone, head = model_cfg["backbone"], model_cfg["decode_head"]
    if len(backbone.get("strides", ())) != 4 or len(backbone.get("dilations", ())) != 4:
        raise ValueError(
            f"changing the output stride needs a ResNet-style backbone config with four "
            f"'strides' and 'dilations'; got backbone type {backbone.get('type')!r}")
    old = resnet_output_stride(backbone["strides"])
    strides, dilations = resnet_strides_and_dilations(output_stride)
    backbone["strides"], backbone["dilations"] = strides, dilations
    if backbone.get("multi_grid"):  # mmseg's multi-grid rates are absolute: they scale with the stride
        grid = [rate * old / output_stride for rate in backbone["multi_grid"]]
        if any(rate != int(rate) for rate in grid):
            raise ValueError(f"the backbone's multi_grid {tuple(backbone['multi_grid'])} at output stride {old} "
                             f"does not scale to whole rates at output stride {output_stride}")
        backbone["multi_grid"] = tuple(int(rate) for rate in grid)
    if head.get("output_stride") is not None:
        head["output_stride"] = output_stride
        return old
    if "dilations" not in head:  # a head without atrous rates (a cascade's 1x1 classifier)
        return old
    scaled = [rate if rate == 1 else rate * old / output_stride for rate in head["dilations"]]
    if any(rate != int(rate) for rate in scaled):
        raise ValueError(
            f"the head's rates {tuple(head['dilations'])} at output stride {old} do not scale to whole "
            f"rates at output stride {output_stride}")
    head["dilations"] = tuple(int(rate) for rate in scaled)
    return old
