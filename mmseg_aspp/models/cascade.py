"""DeepLabV3's "going deeper" backbone: copies of ResNet's block4 cascaded after it (Section 3.2)."""
from __future__ import annotations

import logging
from typing import Sequence

import torch
from mmengine.logging import print_log
from mmseg.models.backbones import ResNetV1c
from torch import nn

from ..registry import MODELS
from .aspp_head import ASPPArgumentError


def atrous_conv(unit: nn.Module) -> nn.Conv2d:
    """A ResNet unit's atrous 3x3 convolution: the most dilated one (a bottleneck's second, a
    basic block's first)."""
    return max((m for m in unit.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)),
               key=lambda m: m.dilation[0])


@MODELS.register_module()
class CascadedResNetV1c(ResNetV1c):
    """mmseg's ``ResNetV1c`` plus ``extra_blocks`` copies of block4 after it (block5, block6, ...).

    Chen et al. (2017), Section 3.2: each extra block has block4's structure (three bottleneck
    units at 2048 channels, stride 1) and twice the previous block's rate, so the output stride
    stays where block4 left it; ``extra_multi_grid`` gives the unit rates inside each extra block
    relative to its rate, as the paper defines multi-grid. (mmseg's ``multi_grid`` for block4
    gives absolute unit rates: the paper's (1, 2, 1) on block4 at rate 2 is
    ``multi_grid=(2, 4, 2)``.) Layers 1-4 are mmseg's, with mmseg's parameter names: an mmseg
    or ImageNet ResNet checkpoint initialises them strictly, and
    the extra blocks are reported as newly initialised (or copied from block4's units:
    ``init_extra_from_block4``).

    Args:
        extra_blocks: How many blocks to append (the paper's block5 to block7: 1 to 3).
        extra_multi_grid: Unit rates of each extra block relative to its rate, e.g. the paper's
            (1, 2, 1): block5 at rate 4 then runs its units at 4, 8 and 4.
        init_extra_from_block4: After ``init_weights``, copy block4's second, second and third
            units into each extra block's units (block4's first unit reads 1024 channels, the
            extra blocks' first units 2048, so it cannot be copied).
        out_indices: Stages whose outputs are returned, counting the extra blocks (block7 is 6);
            by default layers 1-3 and the last block, so heads read the last block as
            ``in_index=3``, as they read block4 of a plain ResNet.
        **kwargs: ``ResNetV1c``'s arguments (``depth``, ``dilations``, ``strides``,
            ``multi_grid``, ``conv_cfg``, ``norm_cfg``, ...).
    """

    def __init__(self, extra_blocks: int = 3, extra_multi_grid: Sequence[int] | None = (1, 2, 1),
                 init_extra_from_block4: bool = False, out_indices: Sequence[int] | None = None, **kwargs) -> None:
        if isinstance(extra_blocks, bool) or not isinstance(extra_blocks, int) or extra_blocks < 0:
            raise ASPPArgumentError(f"extra_blocks must be an int >= 0 (the paper uses 1 to 3); got {extra_blocks!r}")
        if extra_multi_grid is not None and (len(extra_multi_grid) != 3 or any(
                isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in extra_multi_grid)):
            raise ASPPArgumentError(f"extra_multi_grid must be three positive unit rates, e.g. (1, 2, 1), or None; "
                                    f"got {extra_multi_grid!r}")
        stages = kwargs.get("num_stages", 4) + extra_blocks
        out_indices = tuple(out_indices) if out_indices is not None else (0, 1, 2, stages - 1)
        if not out_indices or max(out_indices) >= stages or min(out_indices) < 0:
            raise ASPPArgumentError(f"out_indices {out_indices} must lie in 0..{stages - 1} (the "
                                    f"{stages} stages, extra blocks included)")
        super().__init__(**kwargs)
        self.out_indices = out_indices
        self.extra_blocks = extra_blocks
        self.extra_multi_grid = None if extra_multi_grid is None else tuple(extra_multi_grid)
        self.init_extra_from_block4 = init_extra_from_block4
        last = getattr(self, self.res_layers[-1])
        rate = self.dilations[len(self.res_layers) - 1]
        planes = self.inplanes // self.block.expansion
        for k in range(extra_blocks):
            rate *= 2
            layer = self.make_res_layer(block=self.block, inplanes=self.inplanes, planes=planes,
                                        num_blocks=len(last), stride=1, dilation=rate, style=self.style,
                                        avg_down=self.avg_down, with_cp=self.with_cp, conv_cfg=self.conv_cfg,
                                        norm_cfg=self.norm_cfg, dcn=None, plugins=None,
                                        multi_grid=None if extra_multi_grid is None else
                                        tuple(r * rate for r in extra_multi_grid),
                                        contract_dilation=self.contract_dilation)
            name = f"layer{len(self.res_layers) + 1}"
            self.add_module(name, layer)
            self.res_layers.append(name)
        self._freeze_stages()

    @property
    def extra_layer_names(self) -> list[str]:
        return self.res_layers[len(self.res_layers) - self.extra_blocks:]

    def unit_rates(self) -> list[tuple[str, list[int]]]:
        """``(layer name, rate of each unit)`` for every block (``atrous_conv``'s dilation)."""
        return [(name, [atrous_conv(unit).dilation[0] for unit in getattr(self, name)]) for name in self.res_layers]

    def init_weights(self) -> None:
        super().init_weights()
        names = ", ".join(self.extra_layer_names)
        if self.init_extra_from_block4 and self.extra_blocks:
            self.copy_block4_into_extra_blocks()
            print_log(f"{type(self).__name__}: {names} initialised from block4's units", logger="current")
        elif self.init_cfg is not None and self.extra_blocks:
            print_log(f"{type(self).__name__}: {names} are newly initialised (the checkpoint has layers 1-4 only)",
                      logger="current", level=logging.WARNING)

    @torch.no_grad()
    def copy_block4_into_extra_blocks(self) -> None:
        """Each extra block's units take block4's units 2, 2 and 3 (see ``init_extra_from_block4``)."""
        block4 = getattr(self, self.res_layers[len(self.res_layers) - self.extra_blocks - 1])
        sources = [block4[min(max(i, 1), len(block4) - 1)] for i in range(len(block4))]
        for name in self.extra_layer_names:
            for unit, source in zip(getattr(self, name), sources):
                unit.load_state_dict(source.state_dict())
