"""Judging an fp32 result by its distance from the float64 one, along the same ReLU decisions.

A gradient is a discontinuous function of the forward pass: where a pre-activation lies within
fp32 rounding of zero, a ReLU may open in one run and stay shut in another, and that pixel's
whole gradient appears or vanishes. One such flip among 10^5 activations moved every gradient
of a small DeepLabV3+ head by about 1e-2 relative; mmseg's own fp32 forward flips about as often
(12 flipped activations in 200 seeds, against 11 to 16 for each of our algorithms, 13 for float64
under a 2^-24 perturbation of the weights). Comparing gradient tensors straight against float64
therefore fails at random, whoever computed them.

So each fp32 run is compared with float64 *along its own decisions*: its ReLU masks are recorded,
and mmseg's float64 head is replayed with them. A wrong tap still moves every value by whole
percents. Separately, every decision where ours differs from plain float64 must be at a
pre-activation within rounding of zero (a few times mmseg's own largest fp32 error there); a wrong
value flips activations of ordinary size, which this catches even if the masked comparison did not.
"""
from __future__ import annotations

import copy
from collections import defaultdict
from contextlib import contextmanager
from typing import Callable, Iterator, NamedTuple

import torch
from torch import Tensor, nn

# Ours may be FP32_ERROR_FACTOR times mmseg's float error away from float64 (see
# assert_fp32_as_exact_as_mmseg), plus a floor of a few dozen fp32 roundings; a wrong tap moves
# results by whole percents.
FP32_ERROR_FACTOR = 5.0
FP32_ERROR_FLOOR = 2e-6

Run = Callable[[nn.Module, list], dict]  # (module, inputs) -> named result tensors
Decisions = dict[str, list[Tensor]]  # ReLU module name -> pre-activation of each call, in call order


def relative_error(value: Tensor, reference: Tensor) -> float:
    """||value - reference|| / ||reference||, in float64."""
    reference = reference.double()
    scale = reference.norm().item() or 1.0
    return (value.double() - reference).norm().item() / scale


def perturbed_at_fp32_rounding(module: nn.Module, inputs: list, seed: int = 0):
    """A copy of ``module`` and ``inputs`` with every value scaled by (1 + 2**-24 * N(0, 1))."""
    gen = torch.Generator().manual_seed(seed)

    def jitter(t: Tensor) -> Tensor:
        return t * (1 + 2**-24 * torch.randn(t.shape, generator=gen, dtype=t.dtype))

    module = copy.deepcopy(module)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(jitter(p))
    return module, [jitter(x) for x in inputs]


@contextmanager
def relu_decisions(module: nn.Module, replay: Decisions | None = None) -> Iterator[Decisions]:
    """Record every ``nn.ReLU`` call's pre-activation in ``module``; with ``replay``, each call
    instead keeps exactly the entries whose replayed pre-activation was positive.

    ReLUs run out of place meanwhile, so that the pre-activation is still there to record.
    """
    record: Decisions = defaultdict(list)
    relus = [(name, m) for name, m in module.named_modules() if isinstance(m, nn.ReLU)]

    def hook(name: str, relu: nn.ReLU, inputs: tuple, output: Tensor) -> Tensor | None:
        pre = inputs[0]
        calls = record[name]
        calls.append(pre.detach().double())
        if replay is None:
            return None
        assert len(calls) <= len(replay.get(name, ())), f"{name} runs more often than in the recorded run"
        return pre * (replay[name][len(calls) - 1] > 0).to(pre.dtype)

    inplace = [relu.inplace for _, relu in relus]
    handles = []
    for name, relu in relus:
        relu.inplace = False
        handles.append(relu.register_forward_hook(lambda *args, name=name: hook(name, *args)))
    try:
        yield record
    finally:
        for handle in handles:
            handle.remove()
        for (_, relu), was in zip(relus, inplace):
            relu.inplace = was


def _recorded(run: Run, module: nn.Module, inputs: list, replay: Decisions | None = None) -> tuple[dict, Decisions]:
    with relu_decisions(module, replay) as decisions:
        results = run(module, inputs)
    return results, dict(decisions)


class Fp32Judgement(NamedTuple):
    """What ``assert_fp32_as_exact_as_mmseg`` saw."""

    worst_ratio: float  # max over tensors of ours' error / its bound (<= 1 passes)
    worst_tensor: str
    flips: int  # ReLU decisions of ours that differ from plain float64
    mmseg_flips: int  # the same for mmseg's own fp32 run on the unperturbed problem
    errors: dict[str, tuple[float, float]]  # tensor -> (ours' error, float error)


def _mmseg_rounding(run: Run, upstream: nn.Module, inputs: list, samples: int) -> list[tuple]:
    """mmseg's fp32 run and float64 along its decisions, on the problem and on ``samples - 1``
    copies perturbed at fp32 rounding: each is another draw of its rounding errors.

    Returns:
        ``(fp32 result, fp32 decisions, float64 result, float64 decisions)`` per draw.
    """
    draws = []
    for seed in range(samples):
        module, x = (upstream, inputs) if seed == 0 else perturbed_at_fp32_rounding(upstream, inputs, seed)
        result, decisions = _recorded(run, copy.deepcopy(module), x)
        reference, reference_decisions = _recorded(run, copy.deepcopy(module).double(), [t.double() for t in x],
                                                   decisions)
        draws.append((result, decisions, reference, reference_decisions))
    return draws


def assert_fp32_as_exact_as_mmseg(ours: nn.Module, upstream: nn.Module, inputs: list, run: Run,
                                  ours_run: Run | None = None, samples: int = 3) -> Fp32Judgement:
    """Ours in fp32 lies within a few float errors of mmseg in float64, along the same decisions.

    The float error of a tensor is the largest of mmseg's own fp32 errors over ``samples``
    draws of its rounding (the problem as given, and copies with weights and inputs perturbed
    at fp32 rounding, 2**-24 relative), each against float64 along its own decisions. One draw
    is not enough: on an ill-conditioned gradient (behind a BatchNorm over two values, or
    summed over a whole map) mmseg's error varied 6x between draws. Ours may be
    ``FP32_ERROR_FACTOR`` times that away, plus ``FP32_ERROR_FLOOR``.

    Args:
        ours, upstream: fp32 modules with identical weights and the same ReLU module names.
        inputs: fp32 inputs.
        run: What produces the named result tensors (logits, loss, gradients, buffers) of a module.
        ours_run: How ours runs, when not as ``run`` does (e.g. compiled).
        samples: Draws of mmseg's rounding.
    """
    inputs64 = [x.double() for x in inputs]
    ours_result, ours_decisions = _recorded(ours_run or run, ours, inputs)
    along_ours, _ = _recorded(run, copy.deepcopy(upstream).double(), inputs64, ours_decisions)
    plain, plain_decisions = _recorded(run, copy.deepcopy(upstream).double(), inputs64)
    draws = _mmseg_rounding(run, upstream, inputs, samples)
    assert ours_result.keys() == plain.keys() == draws[0][0].keys()
    assert ours_decisions.keys() == plain_decisions.keys(), "ours and mmseg's run different ReLUs"

    errors, worst = {}, (0.0, "")
    for name, ref in along_ours.items():
        ours_error = relative_error(ours_result[name], ref)
        float_error = max(relative_error(result[name], reference[name]) for result, _, reference, _ in draws)
        bound = FP32_ERROR_FACTOR * float_error + FP32_ERROR_FLOOR
        errors[name] = (ours_error, float_error)
        worst = max(worst, (ours_error / bound, name))
        assert ours_error <= bound, (
            f"{name}: relative error {ours_error:.3e}, float error {float_error:.3e} (bound {bound:.3e})")

    flips = mmseg_flips = 0
    for name, calls in plain_decisions.items():
        assert len(ours_decisions[name]) == len(calls), f"{name} runs a different number of times in ours"
        for i, pre in enumerate(calls):
            # How far from float64 a correct fp32 pre-activation may land here.
            rounding = max((d[name][i] - rd[name][i]).abs().max().item() for _, d, _, rd in draws)
            margin = FP32_ERROR_FACTOR * rounding + FP32_ERROR_FLOOR * pre.abs().max().item()
            flipped = (ours_decisions[name][i] > 0) != (pre > 0)
            flips += int(flipped.sum())
            mmseg_flips += int(((draws[0][1][name][i] > 0) != (pre > 0)).sum())
            far = pre[flipped].abs()
            assert not (far > margin).any(), (
                f"{name} (call {i}): {int((far > margin).sum())} activations flipped at pre-activations up to "
                f"{far.max().item():.3e}, beyond fp32 rounding of zero ({margin:.3e})")
    return Fp32Judgement(worst[0], worst[1], flips, mmseg_flips, errors)
