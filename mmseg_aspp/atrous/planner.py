"""Which algorithm computes each convolution of the head: by rule, or by measuring them.

Modes (the head's ``plan`` argument):

* ``"heuristic"``: rules measured on 2-core CPUs (AVX2 and AVX-512; see the constants
  below) and, on CUDA, cuDNN for everything, except the per-tap GEMM for dilated branches
  when deterministic algorithms are requested (cuDNN's deterministic dilated kernels were
  reported 10-80x slower). No start-up cost.
* ``"measure"``: like ``cudnn.benchmark``, every eligible algorithm is timed once per
  convolution shape, on random data, the first time that shape is seen, and the fastest is
  kept in memory (and in the JSON file named by ``MMSEG_ASPP_PLAN_CACHE``, if set, so that
  later runs skip the timing). The plain convolution is always a candidate, so a measured
  plan is never slower than upstream's computation beyond timing noise. On CPU the timing
  of a 2048-channel head takes tens of seconds per new map size.
* ``"reference"``: mmseg's formula as it stands (no crops, no image-pool shortcut).
* ``"auto"`` (default): ``"measure"`` on CUDA when ``torch.backends.cudnn.benchmark`` is on
  (mmseg's configs turn it on through ``env_cfg.cudnn_benchmark``), else ``"heuristic"``.
  Measured plans depend on timing noise and so on rounding; CPU runs stay reproducible.

Under ``torch.compile`` the heuristic runs (timing needs eager calls); every algorithm
compiles without graph breaks (Winograd inference as one opaque operator, its training in a
whole-tensor form).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from contextlib import contextmanager
from typing import Iterator

import torch

from ..hardware import device_model
from .algorithms import ALGORITHMS, Algorithm, ConvProblem
from .geometry import phase_groups, valid_tap_fraction

MODES = ("auto", "heuristic", "measure", "reference")

# Below this 2-D valid-tap fraction a dilated conv is faster channels-last with tap skipping;
# above it the plain dense (NCHW) convolution wins or ties. Measured: at 128x256 rate 12
# (0.91) channels-last takes 0.70x (bf16) and 0.77x (fp32) of NCHW's time.
SKIP_TAPS_BELOW = 0.92
# Up to this many output pixels (batch x H x W) per-tap GEMMs beat direct convolution in
# inference; with autograd their region-wise backward does not.
GEMM_MAX_PIXELS = 512
# A full 3x3 kernel runs as Winograd when that takes at most this share of the multiplications
# of its valid taps. Measured for F(2x2, 3x3) at 2048 -> 512 channels against tap skipping, in
# inference: at shares of 0.76 and 0.65 1.13x and 1.23x faster (128x256, rates 36 and 24), at
# 0.95 1.11x slower (64x128, rate 24); a training step (batch 2): 0.65 1.19x faster (97x97,
# rate 24), 0.73 a tie (64x64, rate 12), 0.95 1.18x slower (64x128, rate 24).
WINOGRAD_BELOW = 0.8
# F(4x4, 3x3) transforms more values per multiplication saved, and on small phase maps pads
# more; it runs when its share is at most this fraction of F(2x2, 3x3)'s. Measured in
# inference (2048 or 2560 -> 512 channels, batch 1): at 0.56 (the bottleneck at 64x128,
# 32x32, 16x16) 1.39x, 1.12x and 1.26x faster than F(2x2, 3x3); at 0.65 (128x256, rate 12)
# 1.25x faster; at 0.79 (64x128, rate 12) 1.09x slower; at 1.0 (64x64, rate 12) 1.27x slower.
WINOGRAD4_OVER_WINOGRAD = 0.7
# Winograd's transforms cost per input and output channel, its savings per channel pair, so it
# pays from a width C_in C_out / (C_in + C_out) on (``winograd_width``). In inference on a 2-core
# AVX-512 Xeon (channels-last input, batch 1), F(4x4, 3x3) against oneDNN's channels-last
# convolution: 256 -> 256 channels (width 128) at 64x128 21 against 29 ms, rate 1 or 2; 128 -> 128
# (64) 8.2 against 7.5 ms; 64 -> 64 (32) at 128x256 15.5 against 7.2 ms.
WINOGRAD_MIN_WIDTH = 100
# In training F(2x2, 3x3) paid off for the ASPP bottleneck (2048 -> 512, width 410: 3.46 against
# 4.62 s on the EPYC), not for a backbone's 512 -> 512 (256) or 256 -> 256 (batch 2, 64x64, on the
# Xeon: 371 against 362 ms and 98 against 96 ms).
WINOGRAD_TRAIN_MIN_WIDTH = 300

_forced: str | None = None


@contextmanager
def forced_algorithm(name: str | None) -> Iterator[None]:
    """Run every convolution that can take it with algorithm ``name`` (tests prove each this way).

    Convolutions it does not support (Winograd: full 3x3 kernels only, and no reduced-precision
    training) keep their heuristic choice. ``None`` restores normal planning.
    """
    global _forced
    if name is not None and name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; use one of {sorted(ALGORITHMS)}")
    previous, _forced = _forced, name
    try:
        yield
    finally:
        _forced = previous


def resolve_mode(mode: str, device: torch.device) -> str:
    """``auto`` made concrete for ``device``."""
    if mode != "auto":
        return mode
    return "measure" if device.type == "cuda" and torch.backends.cudnn.benchmark else "heuristic"


def deterministic_requested() -> bool:
    return torch.are_deterministic_algorithms_enabled() or torch.backends.cudnn.deterministic


def winograd_share(height: int, width: int, rate: int, m: int = 2) -> float:
    """Multiplications of a phase-wise Winograd F(m x m, 3x3) conv over those of its valid taps."""

    def tiles(length: int) -> int:  # m-wide tiles along an axis, over all phases
        return sum((end - first) * -(-count // m) for first, end, count in phase_groups(length, rate))

    valid = 9 * height * width * valid_tap_fraction(height, rate) * valid_tap_fraction(width, rate)
    return (m + 2) ** 2 * tiles(height) * tiles(width) / valid


def winograd_width(problem: ConvProblem) -> float:
    """``C_in C_out / (C_in + C_out)``: how many multiplications Winograd saves per value it transforms."""
    return problem.in_channels * problem.out_channels / (problem.in_channels + problem.out_channels)


def _winograd_variants(problem: ConvProblem) -> tuple[str, ...]:
    """The Winograd algorithms worth trying for ``problem``, best first (none for a cropped kernel)."""
    min_width = WINOGRAD_TRAIN_MIN_WIDTH if problem.grad else WINOGRAD_MIN_WIDTH
    if problem.kernel != (3, 3) or winograd_width(problem) < min_width:
        return ()
    share2, share4 = (winograd_share(problem.height, problem.width, problem.rate, m) for m in (2, 4))
    variants = []
    if share4 <= min(WINOGRAD_BELOW, WINOGRAD4_OVER_WINOGRAD * share2):
        variants.append("winograd4")  # fp32/float64 inference only; others skip to the next
    if share2 <= WINOGRAD_BELOW:
        variants.append("winograd")
    return tuple(variants)


def preferences(problem: ConvProblem) -> tuple[str, ...]:
    """The heuristic's algorithms for ``problem``, best first."""
    dilated = problem.rate > 1 and problem.kernel != (1, 1)
    if not problem.plain:
        # oneDNN's depthwise convolution is slow when dilated (2048 channels, 64x128, rate 12:
        # 232 ms against 93 for tap by tap, Xeon) and fast undilated (560 channels at 128x256:
        # 44 against 81 ms).
        cpu_dilated_depthwise = problem.depthwise and dilated and problem.device == "cpu"
        return ("depthwise", "dense") if cpu_dilated_depthwise else ("dense",)
    if problem.device != "cpu":
        # Nothing tuned for a CPU (chunked Winograd, per-image loops) runs here unless measured.
        return ("gemm", "dense") if dilated and problem.deterministic else ("dense",)
    if problem.kernel == (1, 1):
        # In inference one GEMM reads the map as it comes (an NCHW map as a transposed operand)
        # and writes channels-last, with the bias in the same pass: 2048 -> 512 at 64x128 on an
        # NCHW map 89 ms against oneDNN's 101 (EPYC); inside a ResNet, on channels-last maps with
        # a folded bias, 256 -> 1024 took oneDNN 82 ms and the GEMM 16 ms (Xeon).
        # In eager training on NCHW maps, GEMMs per image both ways: 66 against 97 ms for oneDNN
        # at 1024 -> 256, 2 x 64 x 64 (Xeon). Compiled, inductor plans oneDNN's layouts itself.
        training_dense = problem.channels_last or torch.compiler.is_compiling()
        return ("dense",) if problem.grad and training_dense else ("gemm", "dense")
    small = problem.batch * problem.height * problem.width <= GEMM_MAX_PIXELS
    if problem.rate == 1:  # the ASPP bottleneck, a backbone's undilated 3x3s
        # In training on a small map Winograd's transformed kernel and its gradient outweigh
        # the activations (V3+ at 16x16, batch 2: 307 MB against mmseg's 68) and its time.
        direct = ("skip", "dense") if problem.channels_last and not problem.grad else ("dense",)
        return direct if small and problem.grad else (*_winograd_variants(problem), *direct)
    height, width, rate = problem.height, problem.width, problem.rate
    nearly_full = valid_tap_fraction(height, rate) * valid_tap_fraction(width, rate) >= SKIP_TAPS_BELOW
    # A channels-last input is read as it comes (a backbone keeps that layout from layer to layer).
    direct = ("dense", "skip") if nearly_full and not problem.channels_last else ("skip", "dense")
    if small:
        return direct if problem.grad else ("gemm", *direct)
    return (*_winograd_variants(problem), *direct)


def choose(problem: ConvProblem, mode: str) -> Algorithm:
    """The algorithm for one convolution (``mode`` already resolved, not ``reference``)."""
    compiling = torch.compiler.is_compiling()
    if _forced is not None and ALGORITHMS[_forced].supports(problem) and not compiling:
        return ALGORITHMS[_forced]
    if mode == "measure" and not compiling:
        return ALGORITHMS[_measured(problem)]
    return ALGORITHMS[next(n for n in preferences(problem) if ALGORITHMS[n].supports(problem))]


# ----------------------------------------------------------------- measuring
_measured_plans: dict[str, str] = {}
_loaded_files: set[str] = set()


def _key(problem: ConvProblem) -> str:
    """The problem and the device model it was measured on."""
    return json.dumps(dict(problem._asdict(), device_model=device_model(problem.device)), sort_keys=True)


def _cache_file() -> str | None:
    return os.environ.get("MMSEG_ASPP_PLAN_CACHE") or None


def _load(path: str) -> None:
    if path in _loaded_files:
        return
    _loaded_files.add(path)
    try:
        with open(path) as f:
            _measured_plans.update({k: v for k, v in json.load(f).items() if v in ALGORITHMS})
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as err:
        raise RuntimeError(f"cannot read the plan cache {path} ({err}); delete it or unset "
                           f"MMSEG_ASPP_PLAN_CACHE") from err


def _save(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".tmp") as f:
        json.dump(_measured_plans, f, indent=1, sort_keys=True)
    os.replace(f.name, path)  # atomic: concurrent ranks never read half a file


def _measured(problem: ConvProblem) -> str:
    path = _cache_file()
    if path:
        _load(path)
    key = _key(problem)
    if key not in _measured_plans:
        timings = {name: seconds_per_call(algorithm, problem)
                   for name, algorithm in ALGORITHMS.items() if algorithm.supports(problem)}
        _measured_plans[key] = min(timings, key=timings.get)
        if path:
            _save(path)
    return _measured_plans[key]


def seconds_per_call(algorithm: Algorithm, problem: ConvProblem, repeats: int = 2) -> float:
    """Best time of ``repeats`` calls (after a warm-up) on random data of ``problem``'s shape,
    forward and, for a problem with autograd, backward."""
    device = torch.device(problem.device)
    dtype = getattr(torch, problem.dtype)
    gen = torch.Generator(device).manual_seed(0)  # the global generators stay untouched
    x = torch.randn(problem.batch, problem.in_channels, problem.height, problem.width, generator=gen,
                    device=device, dtype=dtype)
    if (algorithm.input_layout == "channels_last" or problem.channels_last) and not problem.grad:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(problem.out_channels, problem.in_channels // problem.groups, problem.kernel_size,
                         problem.kernel_size, generator=gen, device=device)
    best = float("inf")
    with torch.autocast(device.type, enabled=False), torch.set_grad_enabled(problem.grad):
        if problem.grad:
            x.requires_grad_()
            weight.requires_grad_()
        for i in range(repeats + 1):
            _sync(device)
            start = time.perf_counter()
            out = algorithm.run([x], weight, slice(None), problem)
            if problem.grad:
                out.backward(torch.ones_like(out))
            _sync(device)
            if i:
                best = min(best, time.perf_counter() - start)
            del out
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
