#!/usr/bin/env python
"""Side-by-side speed/memory benchmark: mmseg_aspp.ASPPHead vs mmseg's ASPPHead.

Every ratio is measured in one run on one machine: the heads get identical
weights and inputs and are timed in interleaved rounds. Results go to a
table on stdout, a JSON file and a PNG chart in --out-dir.

    python tools/benchmark.py --repeats 3     # full run (2-core CPU: about 35 min)
    python tools/benchmark.py --quick         # small shapes, a minute or two
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

# Peak memory on CPU is read with the profiler; level 6 silences its start/stop lines.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")

import torch  # noqa: E402
from torch._C._profiler import _EventType  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mmengine.registry import init_default_scope  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402

import benchmark_models  # noqa: E402
import mmseg_aspp  # noqa: E402,F401
from mmseg_aspp.atrous import valid_tap_fraction  # noqa: E402
from mmseg_aspp.atrous import buffers  # noqa: E402
from mmseg_aspp.atrous.aspp import plan  # noqa: E402
from mmseg_aspp.atrous.weights import prepared_bytes  # noqa: E402
from mmseg_aspp.hardware import device_model, native_reduced_precision  # noqa: E402

HEAD_SHAPES = ["64x128", "64x64", "97x97", "128x256", "32x32", "16x16"]
RATES = (1, 12, 24, 36)
IN_CHANNELS, CHANNELS, NUM_CLASSES = 2048, 512, 19
C1_IN_CHANNELS, C1_CHANNELS = 256, 48  # DeepLabV3+'s stride-4 features and their reduction


@dataclass(frozen=True)
class Family:
    """A decode head to benchmark: mmseg's and ours, and the whole model with each."""

    head: str  # mmseg's registry name; ours is mmseg_aspp.<head>
    label: str  # case names start with it
    head_args: tuple = ()
    decoder: bool = False  # reads stride-4 features (inputs[0]) at twice the map size

    @property
    def model_config(self) -> tuple[str, str]:
        """Our config folder and file of the R101-D8 Cityscapes recipe with this head."""
        folder = "deeplabv3plus" if self.decoder else "deeplabv3"
        return folder, f"{folder}_r101-d8_4xb2-80k_cityscapes-512x1024.py"


FAMILIES = {
    "deeplabv3": Family("ASPPHead", "head"),
    "deeplabv3plus": Family("DepthwiseSeparableASPPHead", "V3+ head",
                            (("c1_in_channels", C1_IN_CHANNELS), ("c1_channels", C1_CHANNELS)), decoder=True),
}


@dataclass
class Row:
    case: str
    mode: str
    impl: str
    median_ms: float
    spread_ms: float
    times_ms: list = field(default_factory=list)
    ratio: float | None = None
    peak_mb: float | None = None
    limit_fraction: float | None = None
    argmax_agreement: float | None = None
    plan: str | None = None
    relative_error: float | None = None  # whole-model rows: L2 distance of the output from upstream eager's


# ----------------------------------------------------------------- measuring
def measure(fns: dict, device, repeats: int, memory: bool | set = True) -> dict[str, tuple[list[float], float | None]]:
    """Time several implementations of one case in interleaved rounds.

    Each gets a warm-up call (caches, allocator, oneDNN primitives) and a call
    whose peak memory is read; then every round times each once, in turn, so a
    slow spell of a shared machine hits all of them alike and their ratio holds.

    Args:
        memory: Read peak memory for all (True), none (False) or the names in a set (others,
            such as another runtime's allocations, are invisible to torch's profiler).

    Returns:
        Per name: wall times in ms, and the peak memory in MB of a call after
        the warm-up (one-off work such as prepared weights is not counted).
    """
    peaks = {}
    for name, fn in fns.items():
        if memory is True or (memory and name in memory):
            peaks[name] = peak_memory_mb(fn, device)  # warms up first
        else:
            fn()
            peaks[name] = None
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_time_ms(fn, device))
    return {name: (times[name], peaks[name]) for name in fns}


def _time_ms(fn, device) -> float:
    """One call's time: CUDA events on a GPU (the kernels' time, not Python's), else wall time."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def peak_memory_mb(fn, device) -> float:
    """Peak memory one call adds on top of what is already allocated, after a warm-up call.

    On CPU it is read from the profiler's record of tensor allocations and frees, summed in
    time order: the process's resident set would also count pages malloc keeps after a free and
    hands out again, which charges many short-lived buffers as if they were alive at once. The
    profiler's own running total is process-wide and only forgets blocks it saw allocated, so it
    drifts up over a run; the warm-up runs under the profiler too, so that what the measured call
    frees of the warm-up's results (gradients, outputs) is known. (The profiler's memory timeline
    gives the same figure, but with the stacks and shapes it needs it ran out of 24 GiB on a
    128x256 training step of many small ops.)
    """
    if device.type == "cuda":
        fn()
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True):
        fn()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((node for node in _event_nodes(prof.profiler.kineto_results.experimental_event_tree())
                     if node.tag == _EventType.Allocation), key=lambda node: node.start_time_ns)
    return max(itertools.accumulate((node.extra_fields.alloc_size for node in events), initial=0)) / 2**20


def _event_nodes(nodes):
    for node in nodes:
        yield node
        yield from _event_nodes(node.children)


def gemm_peak_gflops(device, dtype, budget_s: float = 0.5) -> float:
    """Best matmul rate of square-ish products, grown until one takes ``budget_s``.

    Sized by time rather than fixed: emulated bf16 runs ~50x slower than fp32, and a
    fixed 2048 x 4096 x 2048 product there takes minutes to time.
    """
    best = 0.0
    for n in (256, 512, 1024, 2048, 4096):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        times, _ = measure({"mm": lambda: a @ b}, device, 3, memory=False)["mm"]
        seconds = min(times) / 1000
        best = max(best, 2 * n**3 / seconds / 1e9)
        if seconds * 8 > budget_s:  # the next size takes 8x as long
            break
    return best


def head_valid_macs(batch: int, height: int, width: int, family: Family = FAMILIES["deeplabv3"]) -> float:
    """Multiply-accumulates of the taps that read the map (forward); DeepLabV3+'s atrous
    branches are depthwise (about 1 % of their work) and its decoder runs at 4x the pixels."""
    pixels = batch * height * width
    macs = 0.0
    for rate in RATES:
        taps = 1 if rate == 1 else 9 * valid_tap_fraction(height, rate) * valid_tap_fraction(width, rate)
        macs += pixels * IN_CHANNELS * CHANNELS * (1 if family.decoder else taps)
    border = valid_tap_fraction(height, 1) * valid_tap_fraction(width, 1)
    macs += pixels * len(RATES) * CHANNELS * CHANNELS * 9 * border  # bottleneck, pool part ~0
    if family.decoder:
        fine = 4 * pixels
        return macs + fine * (C1_IN_CHANNELS * C1_CHANNELS + (CHANNELS + C1_CHANNELS + CHANNELS) * CHANNELS
                              + CHANNELS * NUM_CLASSES)
    return macs + pixels * CHANNELS * NUM_CLASSES


def step_flops(mode: str, macs: float) -> float:
    """FLOPs of a forward (eval) or forward + backward (train, about 3x) over ``macs``."""
    return 2 * macs * (1 if mode == "eval" else 3)


def planned_work(args, impls: int, device) -> float:
    """Estimated FLOPs of the whole run (timed, warm-up and memory calls), to weight progress."""
    total = 0.0
    for name in args.heads:
        for shape in [] if args.no_heads else args.shapes:
            height, width = map(int, shape.split("x"))
            for batch in args.batches:
                macs = head_valid_macs(batch, height, width, FAMILIES[name])
                total += sum(step_flops(mode, macs) * impls * (args.repeats + 2)
                             for mode in args.modes if not (mode == "train" and batch == 1))
        if not args.no_model:
            total += benchmark_models.planned_work(device, args.repeats)
    return total


class Progress:
    """A progress bar on stderr, one line per measured case, weighted by estimated work."""

    def __init__(self, total_work: float, width: int = 24) -> None:
        self.total, self.done, self.width = total_work, 0.0, width
        self.started = time.perf_counter()

    def step(self, label: str, work: float) -> None:
        """Report that ``label`` starts; it is expected to cost ``work`` (same unit as the total)."""
        elapsed = time.perf_counter() - self.started
        fraction = min(self.done / self.total, 1.0) if self.total else 0.0
        bar = "#" * round(fraction * self.width)
        eta = f", ~{_minutes(elapsed * (1 - fraction) / fraction)} left" if fraction > 0 else ""
        print(f"  [{bar:<{self.width}}] {fraction:4.0%}  {_minutes(elapsed)} elapsed{eta}  {label}",
              file=sys.stderr, flush=True)
        self.done += work


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


# ------------------------------------------------------------------- models
def build_heads(device, family: Family) -> dict:
    cfg = dict(in_channels=IN_CHANNELS, in_index=3, channels=CHANNELS, num_classes=NUM_CLASSES, dilations=RATES,
               dropout_ratio=0.1, norm_cfg=dict(type="BN", requires_grad=True), align_corners=False,
               **dict(family.head_args))
    upstream = MODELS.build(dict(cfg, type=family.head)).to(device)
    ours = MODELS.build(dict(cfg, type=f"mmseg_aspp.{family.head}")).to(device)
    ours.load_state_dict(upstream.state_dict())
    heads = {"upstream": upstream, "ours": ours}
    if family.decoder:
        return heads
    try:  # optional third reference; PyPI torchvision may not import beside every torch
        from torchvision.models.segmentation.deeplabv3 import ASPP

        heads["torchvision"] = ASPP(IN_CHANNELS, list(RATES[1:]), CHANNELS).to(device)
    except Exception:  # noqa: BLE001 - any import/ABI failure just drops the column
        pass
    return heads


def head_inputs(family: Family, batch: int, height: int, width: int, device) -> list:
    """A backbone's outputs as the head reads them: the map at ``in_index`` 3, and for a
    decoder the stride-4 features at index 0 (twice the size)."""
    x = torch.randn(batch, IN_CHANNELS, height, width, device=device)
    if not family.decoder:
        return [x, x, x, x]
    c1 = torch.randn(batch, C1_IN_CHANNELS, 2 * height, 2 * width, device=device)
    return [c1, c1, c1, x]


def _call(name, head, inputs):
    return head(inputs[3]) if name == "torchvision" else head(inputs)


@dataclass
class Variant:
    """One timed implementation of a case: a head, a compute dtype (None: fp32), compiled or not."""

    impl: str
    head: str
    dtype: torch.dtype | None = None
    compiled: bool = False

    @property
    def precision(self) -> str:
        return "fp32" if self.dtype is None else str(self.dtype).removeprefix("torch.")

    @property
    def baseline(self) -> str:
        """The upstream row this one's ratio is taken against."""
        return "upstream compiled" if self.compiled else "upstream"


def variants(args, heads) -> list[Variant]:
    found = [Variant(name, name) for name in heads]
    found += [Variant(f"ours {p}", "ours", getattr(torch, p)) for p in args.reduced_precision]
    if args.compile:
        found += [Variant("upstream compiled", "upstream", compiled=True), Variant("ours compiled", "ours", compiled=True)]
    return found


def describe_plan(head, x, mode: str, dtype, device) -> str:
    """The algorithm our head runs each branch and the bottleneck with, e.g. 'dense+skip+skip+skip > winograd'."""
    with torch.set_grad_enabled(mode == "train"), _autocast(device, dtype):
        branches, (_, last) = plan(x, head.aspp_modules, head.dilations, head.bottleneck, head.plan)
    return "+".join(algorithm.name for _, algorithm in branches) + f" > {last.name}"


def run_heads(args, family: Family, device, peak, rows, progress):
    heads = build_heads(device, family)
    heads["ours"].plan = args.plan
    # Training steps update BN statistics: restart every case from the same weights.
    initial = {name: {k: v.clone() for k, v in head.state_dict().items()} for name, head in heads.items()}
    compiled = {name: torch.compile(heads[name]) for name in ("upstream", "ours")} if args.compile else {}
    cases = variants(args, heads)
    for shape in args.shapes:
        height, width = map(int, shape.split("x"))
        for batch in args.batches:
            inputs = head_inputs(family, batch, height, width, device)
            case = f"{family.label} {shape} b{batch}"
            macs = head_valid_macs(batch, height, width, family)
            for mode in args.modes:
                if mode == "train" and batch == 1:
                    continue  # BN in the image-pool branch cannot train on one sample
                flops = step_flops(mode, macs)
                for name, head in heads.items():
                    head.load_state_dict(initial[name])
                progress.step(f"{case} {mode}: {', '.join(v.impl for v in cases)}",
                              flops * len(cases) * (args.repeats + 2))
                fns = {v.impl: _step_fn(v.head, (compiled if v.compiled else heads)[v.head], inputs, mode, device,
                                        v.dtype) for v in cases}
                results = measure(fns, device, args.repeats)
                ref_logits = _eval_logits("upstream", heads["upstream"], inputs, None, device) if mode == "eval" else None
                for v in cases:
                    times, peak_mb = results[v.impl]
                    row = Row(case, mode, v.impl, statistics.median(times), max(times) - min(times), times,
                              peak_mb=peak_mb)
                    row.ratio = statistics.median(results[v.baseline][0]) / row.median_ms
                    row.limit_fraction = flops / (peak[v.precision] * 1e9) / (row.median_ms / 1000)
                    if v.head == "ours" and not v.compiled:
                        row.plan = describe_plan(heads["ours"], inputs[3], mode, v.dtype, device)
                    if ref_logits is not None and v.head == "ours":
                        logits = _eval_logits(v.head, (compiled if v.compiled else heads)[v.head], inputs, v.dtype,
                                              device)
                        row.argmax_agreement = (logits.argmax(1) == ref_logits.argmax(1)).float().mean().item()
                    rows.append(row)
    return heads["ours"]


def _autocast(device, dtype):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _eval_logits(name, head, x, dtype, device):
    head.eval()
    with torch.no_grad(), _autocast(device, dtype):
        return _call(name, head, x).float()


def _step_fn(name, head, x, mode, device, dtype):
    if mode == "eval":
        head.eval()

        def fn():
            with torch.no_grad(), _autocast(device, dtype):
                _call(name, head, x)
    else:
        head.train()

        def fn():
            head.zero_grad(set_to_none=True)
            with _autocast(device, dtype):
                out = _call(name, head, x)
            out.float().square().mean().backward()
    return fn


# ------------------------------------------------------------------ output
def device_name(device) -> str:
    name = device_model(device)
    return name if device.type == "cuda" else f"{name} ({torch.get_num_threads()} threads)"


def resolve_reduced_precision(choices: list[str], device) -> list[str]:
    """The dtype names to time ours in under autocast.

    ``auto`` takes those the device computes natively: on CUDA float16 and, from compute
    capability 8.0, bfloat16; on CPU bfloat16 with AVX512_BF16 or AMX. ``none`` takes none;
    names given explicitly are timed even where they are emulated.
    """
    picked: list[str] = []
    for choice in choices:
        if choice == "auto":
            picked += [d for d in ("bfloat16", "float16")
                       if native_reduced_precision(device, getattr(torch, d)) and (device.type == "cuda" or d == "bfloat16")]
        elif choice != "none":
            picked.append(choice)
    return list(dict.fromkeys(picked))


def format_table(rows: list[Row]) -> str:
    header = ("| case | mode | impl | median ms | spread ms | vs upstream | peak MB | of limit | argmax agree "
              "| plan (branches > bottleneck) |")
    lines = [header, "|" + "---|" * 10]
    for r in rows:
        def fmt(v, spec):
            return "-" if v is None else format(v, spec)

        lines.append(
            f"| {r.case} | {r.mode} | {r.impl} | {r.median_ms:.1f} | {r.spread_ms:.1f} | "
            f"{fmt(r.ratio, '.2f')}x | {fmt(r.peak_mb, '.0f')} | {fmt(r.limit_fraction, '.0%')} | "
            f"{fmt(r.argmax_agreement, '.2%')} | {r.plan or '-'} |"
        )
    return "\n".join(lines)


def _model_row(case: str, mode: str, impl: str, times: list[float], peak_mb: float | None) -> Row:
    return Row(case, mode, impl, statistics.median(times), max(times) - min(times), times, peak_mb=peak_mb)


def format_model_table(rows: list[Row]) -> str:
    """Whole-model peers: time, speed-up over upstream eager, ours against the fastest other peer."""
    lines = ["| model, case | mode | peer | median s | vs upstream eager | vs fastest peer | peak MB | argmax agree "
             "| rel. L2 vs upstream |", "|" + "---|" * 9]
    for r in rows:
        others = [o.median_ms for o in rows if (o.case, o.mode) == (r.case, r.mode) and not o.impl.startswith("ours")]
        versus = f"{min(others) / r.median_ms:.2f}x" if r.impl.startswith("ours") else "-"
        agree = "-" if r.argmax_agreement is None else f"{r.argmax_agreement:.2%}"
        error = "-" if r.relative_error is None else f"{r.relative_error:.1e}"
        peak = "-" if r.peak_mb is None else f"{r.peak_mb:.0f}"
        lines.append(f"| {r.case} | {r.mode} | {r.impl} | {r.median_ms / 1000:.2f} | {r.ratio:.2f}x | {versus} | "
                     f"{peak} | {agree} | {error} |")
    return "\n".join(lines)


def plot_models(rows: list[Row], path: str, title: str) -> None:
    """Seconds per step of every peer, one panel per case; ours in colour, the others grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys((r.case, r.mode) for r in rows))
    fig, axes = plt.subplots(len(cases), 1, figsize=(8, 1.2 + 0.38 * len(rows)), squeeze=False)
    for ax, (case, mode) in zip(axes[:, 0], cases):
        group = [r for r in rows if (r.case, r.mode) == (case, mode)]
        seconds = [r.median_ms / 1000 for r in group]
        colours = ["tab:orange" if r.impl.startswith("ours") else "tab:gray" for r in group]
        ax.barh(range(len(group)), seconds, color=colours)
        ax.set_yticks(range(len(group)))
        ax.set_yticklabels([r.impl for r in group], fontsize=8)
        ax.invert_yaxis()
        for i, (value, r) in enumerate(zip(seconds, group)):
            ax.text(value, i, f" {value:.2f} s ({r.ratio:.2f}x)", va="center", fontsize=7)
        ax.set_title(f"{case} {mode}", fontsize=9)
        ax.set_xlim(0, max(seconds) * 1.3)
    axes[-1, 0].set_xlabel("seconds per step (speed-up over upstream eager)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot(rows: list[Row], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = sorted({(r.mode, r.impl) for r in rows if r.impl != "upstream"})
    cases = list(dict.fromkeys(r.case for r in rows))
    fig, ax = plt.subplots(figsize=(max(8, len(cases) * 1.1), 4.5))
    width = 0.8 / max(1, len(series))
    for k, (mode, impl) in enumerate(series):
        values = [next((r.ratio or 0 for r in rows if (r.case, r.mode, r.impl) == (c, mode, impl)), 0)
                  for c in cases]
        ax.bar([i + k * width for i in range(len(cases))], values, width, label=f"{impl} ({mode})")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(cases))])
    ax.set_xticklabels(cases, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("speed-up over mmseg ASPPHead (x)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", nargs="+", default=HEAD_SHAPES, help="feature maps HxW")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--modes", nargs="+", default=["eval", "train"], choices=["eval", "train"])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (after a warm-up)")
    parser.add_argument("--reduced-precision", nargs="+", default=["auto"],
                        choices=["auto", "bfloat16", "float16", "none"],
                        help="also time ours under autocast in these dtypes; auto: those the device computes "
                             "natively (CUDA: float16, and bfloat16 from compute capability 8.0; CPU: bfloat16 "
                             "with AVX512_BF16/AMX)")
    parser.add_argument("--plan", default="auto", choices=["auto", "heuristic", "measure", "reference"],
                        help="how our head picks its algorithms (auto measures on CUDA, as cudnn.benchmark)")
    parser.add_argument("--compile", action="store_true", help="also time both heads under torch.compile")
    parser.add_argument("--tf32", choices=["default", "on", "off"], default="default",
                        help="TF32 for CUDA matmuls and convolutions (PyTorch's default: convolutions only)")
    parser.add_argument("--deterministic", action="store_true",
                        help="cudnn.deterministic on (and cudnn.benchmark off), as mmseg's randomness.deterministic")
    parser.add_argument("--heads", nargs="+", default=list(FAMILIES), choices=list(FAMILIES),
                        help="DeepLabV3's ASPPHead, DeepLabV3+'s DepthwiseSeparableASPPHead, or both")
    parser.add_argument("--no-model", action="store_true", help="skip the whole R101-D8 model peers")
    parser.add_argument("--no-heads", action="store_true", help="only the whole R101-D8 model peers")
    parser.add_argument("--quick", action="store_true", help="32x32 and 16x16, batch 2, 2 repeats, no model")
    parser.add_argument("--out-dir", default="work_dirs/benchmark")
    args = parser.parse_args(argv)
    if args.quick:
        args.shapes, args.batches, args.repeats, args.no_model = ["32x32", "16x16"], [2], 2, True

    init_default_scope("mmseg")
    device = torch.device(args.device)
    if device.type == "cuda":
        # As mmseg's configs set them: env_cfg.cudnn_benchmark, randomness.deterministic.
        torch.backends.cudnn.benchmark = not args.deterministic
        torch.backends.cudnn.deterministic = args.deterministic
        if args.tf32 != "default":
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32 == "on"
    asked_auto = "auto" in args.reduced_precision
    args.reduced_precision = resolve_reduced_precision(args.reduced_precision, device)
    torch.manual_seed(0)
    name = device_name(device)
    print(f"device: {name}; torch {torch.__version__}", flush=True)
    native = {p: native_reduced_precision(device, getattr(torch, p)) for p in args.reduced_precision}
    for precision, is_native in native.items():
        if not is_native:
            print(f"note: this {device.type} has no native {precision} arithmetic; its rows measure emulation, "
                  f"slower than fp32", flush=True)
    if not args.reduced_precision:
        why = f"none native on this {device.type}" if asked_auto else "--reduced-precision none"
        print(f"reduced precision: not timed ({why}; --reduced-precision bfloat16 times it anyway)", flush=True)
    peak = {p: gemm_peak_gflops(device, getattr(torch, p)) for p in ["float32", *args.reduced_precision]}
    peak["fp32"] = peak.pop("float32")
    print("GEMM peak: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak.items()), flush=True)

    impls = 2 + len(args.reduced_precision) + 2 * args.compile
    progress = Progress(planned_work(args, impls, device))
    rows: list[Row] = []
    model_rows: list[Row] = []
    notes: list[str] = []
    cache_mb = model_cache_mb = 0.0
    for head in args.heads:
        if not args.no_heads:
            ours = run_heads(args, FAMILIES[head], device, peak, rows, progress)
            cache_mb += prepared_bytes() / 2**20
            del ours  # its prepared weights go with it
        if not args.no_model:
            found, kept = benchmark_models.run_model_peers(args, FAMILIES[head], device, model_rows, progress,
                                                           measure, _model_row)
            notes += found
            model_cache_mb = max(model_cache_mb, kept / 2**20)
    notes = list(dict.fromkeys(notes))

    os.makedirs(args.out_dir, exist_ok=True)
    table = format_table(rows) if rows else ""
    model_table = format_model_table(model_rows) if model_rows else ""
    cache = (f"weights our head prepared and keeps between calls (every dtype and layout this run used): "
             f"{cache_mb:.0f} MB, not in peak MB")
    if model_rows:
        cache += (f"; whole models: up to {model_cache_mb:.0f} MB of prepared (folded, transformed) weights "
                  f"for one recipe, and {buffers.kept_bytes() / 2**20:.0f} MB of reusable buffers")
    cache += "".join(f"\nnote: {n}" for n in notes)
    settings = f"plan {args.plan}; compile {args.compile}"
    if device.type == "cuda":
        settings += (f"; cudnn.benchmark {torch.backends.cudnn.benchmark}, deterministic "
                     f"{torch.backends.cudnn.deterministic}; TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, "
                     f"conv {torch.backends.cudnn.allow_tf32}")
    print(f"\nDevice: {name}; {settings}\n\n{model_table}\n\n{table}\n\n{cache}")
    meta = dict(device=name, torch=torch.__version__, gemm_peak_gflops=peak, rates=RATES,
                in_channels=IN_CHANNELS, channels=CHANNELS, c1=(C1_IN_CHANNELS, C1_CHANNELS), heads=args.heads,
                repeats=args.repeats,
                reduced_precision=args.reduced_precision, reduced_precision_native=native, plan=args.plan,
                compile=args.compile, settings=settings, prepared_weight_cache_mb=cache_mb)
    with open(os.path.join(args.out_dir, "benchmark.json"), "w") as f:
        json.dump(dict(meta=meta, rows=[asdict(r) for r in rows], model_rows=[asdict(r) for r in model_rows]), f,
                  indent=1)
    with open(os.path.join(args.out_dir, "benchmark.md"), "w") as f:
        peaks = ", ".join(f"{k} {v:.0f}" for k, v in peak.items())
        native_note = "".join(f"; native {p}: {n}" for p, n in native.items())
        f.write(f"Device: {name}; torch {torch.__version__}; {settings}; GEMM peak GFLOP/s: {peaks}{native_note}"
                f"\n\n{model_table}\n\n{table}\n\n{cache}\n")
    charts = []
    if rows:
        plot(rows, os.path.join(args.out_dir, "benchmark.png"), f"{name}, torch {torch.__version__}")
        charts.append("benchmark.png")
    if model_rows:
        plot_models(model_rows, os.path.join(args.out_dir, "models.png"), f"{name}, torch {torch.__version__}")
        charts.append("models.png")
    print(f"\nwrote {args.out_dir}/benchmark.json, benchmark.md, {', '.join(charts)}")


if __name__ == "__main__":
    main()
