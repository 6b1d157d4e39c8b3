"""The fp32 judge itself (float_error.py): it forgives a ReLU that flips at a pre-activation
within rounding of zero, and catches one that flips anywhere else."""
import copy

import pytest
import torch
from torch import nn

from float_error import FP32_ERROR_FACTOR, FP32_ERROR_FLOOR, assert_fp32_as_exact_as_mmseg, relative_error

ZERO, LARGE = (0, 0, 1, 2), (0, 0, 3, 3)  # pixels of the input where the ReLU's input is 0 and large


def _model_and_input():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.ReLU(inplace=True), nn.Conv2d(1, 2, 1))
    with torch.no_grad():
        model[0].weight.fill_(1.5)
    x = torch.rand(1, 1, 6, 6) + 0.5
    x[ZERO], x[LARGE] = 0.0, 3.0
    return model, [x]


def _run(model, inputs):
    x = inputs[0].clone().requires_grad_()
    out = model(x)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return {"out": out.detach(), "input.grad": x.grad, **{f"{n}.grad": p.grad for n, p in model.named_parameters()}}


def _nudged(model, pixel, value):
    """A copy whose ReLU sees ``value`` at ``pixel`` (by an added constant: gradients still flow)."""
    ours = copy.deepcopy(model)

    def nudge(module, inputs):
        shift = torch.zeros_like(inputs[0])
        shift[pixel] = value - inputs[0][pixel].detach()
        return (inputs[0] + shift,)

    ours[1].register_forward_pre_hook(nudge)
    return ours


def test_a_flip_within_rounding_of_zero_passes():
    model, inputs = _model_and_input()
    ours = _nudged(model, ZERO, 1e-9)  # far below fp32 rounding of the map's values
    judgement = assert_fp32_as_exact_as_mmseg(ours, model, inputs, _run)
    assert (judgement.flips, judgement.mmseg_flips) == (1, 0)
    # Compared with plain float64 instead, the flipped pixel's input gradient alone fails the bound.
    reference = _run(copy.deepcopy(model).double(), [inputs[0].double()])
    error = relative_error(_run(ours, inputs)["input.grad"], reference["input.grad"])
    assert error > 10 * (FP32_ERROR_FACTOR * judgement.errors["input.grad"][1] + FP32_ERROR_FLOOR)


def test_a_flip_at_an_ordinary_value_fails():
    model, inputs = _model_and_input()
    # The ReLU shuts where its input is 4.5: the masked comparison agrees (float64 is replayed
    # with the same mask), so only the flip check can see it.
    with pytest.raises(AssertionError, match=r"^1 \(call 0\): 1 activations flipped at pre-activations up to 4\.5"):
        assert_fp32_as_exact_as_mmseg(_nudged(model, LARGE, -4.5), model, inputs, _run)


def test_a_wrong_value_fails():
    model, inputs = _model_and_input()
    with pytest.raises(AssertionError, match="out: relative error"):
        assert_fp32_as_exact_as_mmseg(_nudged(model, LARGE, 4.6), model, inputs, _run)
