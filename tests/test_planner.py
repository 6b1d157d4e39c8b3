"""The planner: rules per device, measured choice with a faked clock, plan cache, GPU-safe op
counts, and torch.compile without graph breaks."""
import copy
import json

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from float_error import assert_fp32_as_exact_as_mmseg
from helpers import assert_float64_equal, head_cfg, head_step, twin_heads
from mmseg_aspp.atrous import planner
from mmseg_aspp.atrous.algorithms import ALGORITHMS, ConvProblem
from mmseg_aspp.models.aspp_head import ASPPArgumentError

BENCHMARK_HEAD = dict(dilations=(1, 12, 24, 36), in_channels=32, channels=16, num_classes=19)


def problem(height=64, width=128, rate=12, batch=1, grad=False, device="cpu", deterministic=False, **kw):
    """A convolution of the real DeepLabV3 head (2048 -> 512 channels) unless ``kw`` says otherwise."""
    fields = dict(batch=batch, in_channels=2048, out_channels=512, height=height, width=width, kernel_size=3,
                  rows=(0, 3), cols=(0, 3), padding=(rate, rate), rate=rate, dtype="float32", device=device,
                  grad=grad, deterministic=deterministic)
    return ConvProblem(**{**fields, **kw})


BOTTLENECK = dict(rate=1, padding=(1, 1))
LAYER3 = dict(in_channels=256, out_channels=256, padding=(2, 2), channels_last=True)
DEPTHWISE = dict(in_channels=2048, out_channels=2048, groups=2048, channels_last=True)
POINTWISE = dict(kernel_size=1, rows=(0, 1), cols=(0, 1), rate=1, padding=(0, 0))


@pytest.mark.parametrize("case, expected", [
    (dict(), "winograd"),  # 64x128 rate 12: phases of 5x10 2x2 tiles, 0.65 of the valid taps' work
    (dict(rate=24), "skip"),  # 0.95 of the valid taps' work as Winograd: tap skipping wins
    (dict(grad=True), "winograd"),  # forward, input and weight gradients all as Winograd
    (dict(height=128, width=256, rate=6), "winograd4"),  # phases of 21x42: 4x4 tiles pay
    (dict(height=128, width=256, rate=6, grad=True), "winograd"),  # F(4x4, 3x3) only in inference
    (dict(height=16, width=16, batch=2, rate=6), "gemm"),  # 512 pixels: per-tap GEMMs
    (dict(height=16, width=16, batch=2, rate=6, grad=True), "skip"),
    (dict(height=97, width=97, rate=2, grad=True), "winograd"),
    (dict(POINTWISE, channels_last=True), "gemm"),  # the 1x1 branch beside channels-last 3x3 branches
    (dict(POINTWISE), "gemm"),  # on an NCHW input (DeepLabV3+): one GEMM reading it transposed
    (dict(POINTWISE, grad=True), "gemm"),  # training on NCHW: GEMMs per image, both gradients too
    (dict(POINTWISE, grad=True, channels_last=True), "dense"),
    (dict(rows=(1, 2), cols=(0, 3), padding=(0, 36), rate=36, height=32), "skip"),  # a 1x3 crop
    (BOTTLENECK, "winograd4"),  # 0.56 of F(2x2, 3x3)'s multiplications
    (dict(BOTTLENECK, grad=True), "winograd"),
    (dict(BOTTLENECK, height=16, width=16, batch=2), "winograd4"),
    (dict(BOTTLENECK, height=2, width=2), "dense"),  # a 2x2 tile for 4 pixels reading 16 taps: no saving
    (dict(BOTTLENECK, height=16, width=16, batch=2, grad=True), "dense"),  # transformed kernels outweigh the map
    (dict(grad=True, dtype="bfloat16"), "skip"),  # bf16 training: Winograd's rounding is too coarse
    (dict(BOTTLENECK, grad=True, dtype="bfloat16"), "dense"),
    (dict(BOTTLENECK, dtype="bfloat16"), "winograd"),  # bf16 inference keeps F(2x2) (error <= 4x direct)
    # A ResNet-D8 backbone's convolutions, on channels-last maps as its layers pass them on.
    (dict(LAYER3, rate=2), "winograd4"),  # layer3's 3x3 at rate 2
    (dict(LAYER3, rate=1, padding=(1, 1)), "winograd4"),  # its first block (contracted dilation)
    (dict(LAYER3, rate=2, grad=True, channels_last=False), "dense"),  # 256 channels train as fast dense
    (dict(LAYER3, rate=2, in_channels=128, out_channels=128), "skip"),  # too narrow for Winograd
    (dict(LAYER3, rate=1, padding=(1, 1), in_channels=64, out_channels=64, height=128, width=256), "skip"),
    (dict(POINTWISE, channels_last=True, in_channels=1024, out_channels=256), "gemm"),
    (dict(LAYER3, rate=1, padding=(1, 1), stride=2), "dense"),  # strided: dense only
    (dict(LAYER3, rate=1, padding=(1, 1), groups=2), "dense"),
    (dict(LAYER3, rate=2, padding=(0, 0)), "dense"),  # a 3x3 that shrinks the map
    # DeepLabV3+'s depthwise kernels: tap by tap where dilated, oneDNN where not; training dense.
    (dict(DEPTHWISE), "depthwise"),
    (dict(DEPTHWISE, rate=1, padding=(1, 1), height=128, width=256, in_channels=560, out_channels=560,
          groups=560), "dense"),
    (dict(DEPTHWISE, grad=True), "dense"),
    (dict(DEPTHWISE, device="cuda"), "dense"),
])
def test_cpu_rules(case, expected):
    assert planner.choose(problem(**case), "heuristic").name == expected


@pytest.mark.parametrize("case", [dict(), dict(grad=True), dict(height=16, width=16, batch=2, rate=6), BOTTLENECK])
def test_gpu_rules_use_cudnn_unless_deterministic(case):
    """Nothing CPU-tuned runs on CUDA by rule: cuDNN everywhere, except that deterministic runs
    take per-tap GEMMs for dilated kernels (cuDNN's deterministic dilated kernels are slow)."""
    assert planner.choose(problem(device="cuda", **case), "heuristic").name == "dense"
    deterministic = planner.choose(problem(device="cuda", deterministic=True, **case), "heuristic").name
    assert deterministic == ("dense" if case is BOTTLENECK else "gemm")


@pytest.mark.parametrize("device, benchmark, expected", [
    ("cpu", True, "heuristic"), ("cuda", True, "measure"), ("cuda", False, "heuristic")])
def test_auto_measures_where_cudnn_benchmark_would(device, benchmark, expected, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", benchmark)
    assert planner.resolve_mode("auto", torch.device(device)) == expected
    assert planner.resolve_mode("heuristic", torch.device(device)) == "heuristic"


@pytest.fixture
def fake_clock(monkeypatch, tmp_path):
    """Measured planning with a clock that says gemm < dense < skip < winograd < winograd4; fresh caches."""
    seconds = {"gemm": 1.0, "dense": 2.0, "skip": 3.0, "winograd": 4.0, "winograd4": 5.0}
    timed = []

    def fake(algorithm, problem, repeats=2):
        timed.append((algorithm.name, problem))
        return seconds[algorithm.name]

    monkeypatch.setattr(planner, "seconds_per_call", fake)
    monkeypatch.setattr(planner, "_measured_plans", {})
    monkeypatch.setattr(planner, "_loaded_files", set())
    monkeypatch.setenv("MMSEG_ASPP_PLAN_CACHE", str(tmp_path / "plans.json"))
    return seconds, timed


def test_measure_keeps_the_fastest_and_times_each_shape_once(fake_clock, tmp_path):
    seconds, timed = fake_clock
    assert planner.choose(problem(), "measure").name == "gemm"
    # Every eligible candidate, dense included (the depthwise algorithm takes grouped kernels only).
    assert {name for name, _ in timed} == set(ALGORITHMS) - {"depthwise"}
    timed.clear()
    assert planner.choose(problem(), "measure").name == "gemm"
    assert timed == []  # remembered
    assert planner.choose(problem(grad=True, height=64, width=128, rows=(1, 2), padding=(0, 12)), "measure").name == "gemm"
    assert not {"winograd", "winograd4"} & {name for name, _ in timed}  # ineligible for a cropped (1x3) kernel

    seconds["dense"] = 0.5  # a new process reads the file rather than timing again
    planner._measured_plans.clear()
    planner._loaded_files.clear()
    timed.clear()
    assert planner.choose(problem(), "measure").name == "gemm" and timed == []
    stored = json.loads((tmp_path / "plans.json").read_text())
    assert len(stored) == 2 and set(stored.values()) == {"gemm"}
    assert all(json.loads(key)["device_model"] for key in stored)


def test_a_damaged_plan_cache_names_the_file(fake_clock, tmp_path):
    (tmp_path / "plans.json").write_text("{not json")
    with pytest.raises(RuntimeError, match="plans.json.*MMSEG_ASPP_PLAN_CACHE"):
        planner.choose(problem(), "measure")


@pytest.mark.parametrize("grad", [False, True])
def test_every_algorithm_can_be_timed(grad):
    for name, algorithm in ALGORITHMS.items():
        case = problem(height=9, width=11, rate=2, grad=grad, batch=2)
        if algorithm.supports(case):
            assert 0 < planner.seconds_per_call(algorithm, case, repeats=1) < 60, name


def test_measured_head_equals_mmseg_in_float64(monkeypatch):
    monkeypatch.setattr(planner, "_measured_plans", {})
    monkeypatch.delenv("MMSEG_ASPP_PLAN_CACHE", raising=False)
    ours, upstream = twin_heads(dilations=(1, 3, 6, 12))
    ours.plan = "measure"
    ours.double().eval(), upstream.double().eval()
    x = [torch.randn(2, 16, 27, 33, dtype=torch.float64)]
    with torch.no_grad():
        assert_float64_equal({"logits": ours(x)}, {"logits": upstream(x)})
    assert planner._measured_plans  # it did measure


def test_reference_plan_is_mmsegs_formula():
    ours, upstream = twin_heads()
    ours.plan = "reference"
    ours.double().eval(), upstream.double().eval()
    x = [torch.randn(1, 16, 20, 30, dtype=torch.float64)]
    with torch.no_grad():
        assert_float64_equal({"logits": ours(x)}, {"logits": upstream(x)})


def test_bad_plan_and_forced_names_are_refused():
    from mmseg.registry import MODELS

    with pytest.raises(ASPPArgumentError, match="plan must be one of auto, heuristic, measure, reference"):
        MODELS.build(head_cfg("ours", plan="fastest"))
    with pytest.raises(ValueError, match="unknown algorithm 'fft'"):
        with planner.forced_algorithm("fft"):
            pass


def _top_level_aten_ops(fn) -> int:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if e.cpu_parent is None and e.name.startswith("aten::"))


def test_gpu_plan_issues_few_ops_whatever_the_map_size(monkeypatch):
    """Each op is a kernel launch on a GPU: the CUDA plan (forced here on CPU) must not loop
    over chunks, tiles or images."""
    rules = planner.preferences
    monkeypatch.setattr(planner, "preferences", lambda p: rules(p._replace(device="cuda")))
    ours, upstream = twin_heads(**BENCHMARK_HEAD)
    ours.eval(), upstream.eval()
    counts = []
    with torch.no_grad():
        for size in ((64, 128), (128, 256)):
            x = [torch.randn(1, 32, *size)]
            ours(x)  # prepared weights, as in steady state
            counts.append((_top_level_aten_ops(lambda: ours(x)), _top_level_aten_ops(lambda: upstream(x))))
    (ours_small, upstream_small), (ours_large, _) = counts
    assert ours_small == ours_large <= 100, counts
    assert upstream_small < ours_small  # upstream's ~23: ours adds crops, the pool term and norms


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_compiles_to_one_graph_as_exact_as_mmseg(train, planned_as_wide):
    """Under torch.compile the forward is one graph (eval and train), and its logits, loss and
    gradients are as close to mmseg's float64 result as mmseg's own fp32 ones (see float_error)."""
    ours, upstream = twin_heads(**BENCHMARK_HEAD, dropout_ratio=0.0)
    x = [torch.randn(2, 32, 33, 47)]
    torch._dynamo.reset()
    probe = copy.deepcopy(ours).train(train)  # explain runs the forward: keep ours' BN statistics fresh
    with torch.set_grad_enabled(train):
        explained = torch._dynamo.explain(probe)(x)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    compiled = torch.compile(ours, backend="aot_eager")
    assert_fp32_as_exact_as_mmseg(ours, upstream, x, lambda head, inputs: head_step(head, inputs, train),
                                  ours_run=lambda head, inputs: head_step(head, inputs, train, call=compiled))
