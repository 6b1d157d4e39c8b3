"""tools/benchmark.py on one small case: every output written, ratios and progress consistent."""
import json

import pytest
import torch

from mmseg_aspp.hardware import native_reduced_precision
from tooling import load_tool

pytestmark = pytest.mark.stack_independent  # the tool's outputs; timing is not a property of the mmseg line


def test_small_run_writes_table_json_and_chart(tmp_path, monkeypatch, capsys):
    bench = load_tool("benchmark")
    bars = []

    class RecordingProgress(bench.Progress):
        def __init__(self, total_work):
            super().__init__(total_work)
            bars.append(self)

    monkeypatch.setattr(bench, "Progress", RecordingProgress)
    bench.main(["--shapes", "16x16", "--batches", "2", "--repeats", "1", "--no-model",
                "--out-dir", str(tmp_path)])

    (progress,) = bars
    assert progress.total > 0 and progress.done == pytest.approx(progress.total)  # the estimate covers the run
    assert "elapsed" in capsys.readouterr().err

    data = json.loads((tmp_path / "benchmark.json").read_text())
    native = native_reduced_precision("cpu", torch.bfloat16)
    # The default (auto) times bf16 only where the CPU computes it; emulated it is slower than fp32.
    assert data["meta"]["reduced_precision"] == (["bfloat16"] if native else [])
    assert data["meta"]["reduced_precision_native"] == ({"bfloat16": True} if native else {})
    assert data["meta"]["prepared_weight_cache_mb"] > 0  # eval calls prepared Winograd and tap kernels
    rows = {(r["case"], r["mode"], r["impl"]): r for r in data["rows"]}
    impls = ("upstream", "ours", "ours bfloat16") if native else ("upstream", "ours")
    cases = ("head 16x16 b2", "V3+ head 16x16 b2")  # DeepLabV3 and DeepLabV3+, by default both
    assert set(rows) == {(case, mode, impl) for case in cases for mode in ("eval", "train") for impl in impls}
    for (case, mode, impl), row in rows.items():
        assert row["median_ms"] > 0 and len(row["times_ms"]) == 1
        upstream_ms = rows[(case, mode, "upstream")]["median_ms"]
        assert row["ratio"] == pytest.approx(upstream_ms / row["median_ms"])
        assert row["limit_fraction"] > 0
        assert (row["plan"] is not None) == impl.startswith("ours")
        if mode == "eval" and impl != "upstream":
            # Same weights and inputs: fp32 decisions match upstream's; bf16 mostly does.
            assert row["argmax_agreement"] >= (0.99 if impl == "ours" else 0.9)
        else:
            assert row["argmax_agreement"] is None
    # 16x16 in batches of 2 is 512 pixels: per-tap GEMMs in inference, tap skipping in training;
    # rates 24 and 36 reach past the map (1x1 crops, GEMMs as the 1x1 branch, in training too);
    # the bottleneck is Winograd F(4x4, 3x3) in fp32 inference, dense in training.
    # DeepLabV3+ plans the pointwise (1x1) half of its separable branches: one GEMM each in
    # inference.
    assert rows[(cases[0], "eval", "ours")]["plan"] == "gemm+gemm+gemm+gemm > winograd4"
    assert rows[(cases[0], "train", "ours")]["plan"] == "gemm+skip+gemm+gemm > dense"
    assert rows[(cases[1], "eval", "ours")]["plan"] == "gemm+gemm+gemm+gemm > winograd4"

    table = (tmp_path / "benchmark.md").read_text()
    assert "| head 16x16 b2 | eval | ours |" in table and "| V3+ head 16x16 b2 | train | ours |" in table
    assert "GEMM peak" in table
    assert (tmp_path / "benchmark.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("choices, device, native, expected", [
    (["auto"], "cpu", True, ["bfloat16"]), (["auto"], "cpu", False, []), (["bfloat16"], "cpu", False, ["bfloat16"]),
    (["auto"], "cuda", True, ["bfloat16", "float16"]), (["auto", "float16"], "cuda", False, ["float16"]),
    (["none"], "cuda", True, [])])
def test_reduced_precision_choice(choices, device, native, expected, monkeypatch):
    bench = load_tool("benchmark")
    monkeypatch.setattr(bench, "native_reduced_precision",
                        lambda device, dtype: native or (device.type == "cuda" and dtype == torch.float16))
    assert bench.resolve_reduced_precision(choices, torch.device(device)) == expected


def test_compiled_rows_are_compared_with_compiled_upstream():
    bench = load_tool("benchmark")
    args = bench.argparse.Namespace(reduced_precision=["bfloat16"], compile=True)
    found = {v.impl: (v.head, v.precision, v.baseline) for v in bench.variants(args, {"upstream": 0, "ours": 0})}
    assert found == {"upstream": ("upstream", "fp32", "upstream"), "ours": ("ours", "fp32", "upstream"),
                     "ours bfloat16": ("ours", "bfloat16", "upstream"),
                     "upstream compiled": ("upstream", "fp32", "upstream compiled"),
                     "ours compiled": ("ours", "fp32", "upstream compiled")}


@pytest.mark.parametrize("gflops, sizes", [(1.0, [256, 512]), (200.0, [256, 512, 1024, 2048])])
def test_gemm_peak_grows_sizes_only_within_its_time_budget(gflops, sizes, monkeypatch):
    """Emulated bf16 (~1 GFLOP/s) stops after a 512 product; fast fp32 goes on to 2048."""
    bench = load_tool("benchmark")
    made = []  # the size of each matrix the tool asks for

    def fake_measure(fns, device, repeats, memory=True):
        n = made[-1]
        return {"mm": ([2 * n**3 / gflops / 1e9 * 1000] * repeats, None)}

    monkeypatch.setattr(bench, "measure", fake_measure)
    monkeypatch.setattr(torch, "randn", lambda *shape, **kw: made.append(shape[0]) or torch.zeros(1))
    assert bench.gemm_peak_gflops(torch.device("cpu"), torch.float32) == pytest.approx(gflops)
    assert made[::2] == sizes


def test_cpu_peak_memory_is_what_one_call_adds_and_does_not_drift():
    bench = load_tool("benchmark")
    kept = []
    mib = 2**18  # float32 elements in one MiB

    def call():  # 3 MiB alive at once, 1 MiB of it kept after the call
        a = torch.ones(2 * mib)
        kept.append(a[:mib] + 1)

    weight = torch.zeros(4 * mib, requires_grad=True)

    def train_step():  # frees the previous call's 4 MiB gradient, makes 4 MiB of activation and a new one
        weight.grad = None
        activation = weight * 2
        activation.sum().backward()

    assert [round(bench.peak_memory_mb(call, torch.device("cpu")), 1) for _ in range(3)] == [3.0] * 3
    assert [round(bench.peak_memory_mb(train_step, torch.device("cpu")), 1) for _ in range(3)] == [4.0] * 3


def test_model_peers_rows_and_missing_runtimes(monkeypatch, tmp_path):
    """The whole-model peers on the demo-sized recipes at a small size: a row per peer and case,
    outputs compared with upstream eager, a runtime that cannot run reported, not fatal."""
    bench = load_tool("benchmark")
    models = bench.benchmark_models
    real_build = models.build_pair
    demo = ("demo", "deeplabv3_r18-d8_1xb4-300it_synthetic-cityscapes-96x192.py")
    monkeypatch.setattr(models, "build_pair", lambda folder, config, device, plan: real_build(
        *demo, device, plan, upstream_folder="deeplabv3_upstream"))
    monkeypatch.setattr(models, "CPU_CASES", [("64x96 b1", "eval", 1, (64, 96)), ("64x64 b2", "train", 2, (64, 64))])
    monkeypatch.setattr(models, "_compiled", lambda module, notes, what: notes.append(f"{what}: skipped"))
    real_session = models.runtime_session

    def session(runtime, path, threads):
        if runtime == "openvino":
            raise ImportError("No module named 'openvino'")
        return real_session(runtime, path, threads)

    monkeypatch.setattr(models, "runtime_session", session)
    bench.main(["--no-heads", "--heads", "deeplabv3", "--repeats", "1", "--out-dir", str(tmp_path)])
    data = json.loads((tmp_path / "benchmark.json").read_text())
    rows = {(r["case"], r["mode"], r["impl"]): r for r in data["model_rows"]}
    eval_peers = {"upstream", "upstream channels_last", "upstream onnxruntime", "ours"}
    assert set(rows) == ({("R101-D8 64x96 b1", "eval", p) for p in eval_peers}
                         | {("R101-D8 backbone 64x96 b1", "eval", p) for p in eval_peers}
                         | {("R101-D8 64x64 b2", "train", p) for p in ("upstream", "upstream channels_last", "ours")})
    for (case, mode, impl), row in rows.items():
        assert row["median_ms"] > 0 and row["ratio"] > 0
        if mode == "eval":
            assert row["relative_error"] < 1e-4  # the same function, fp32 rounding apart
            if "backbone" not in case:
                assert row["argmax_agreement"] > 0.999
        assert (row["peak_mb"] is None) == (impl == "upstream onnxruntime")
    table = (tmp_path / "benchmark.md").read_text()
    assert "openvino: not run (ImportError: No module named 'openvino')" in table
    assert "vs fastest peer" in table and (tmp_path / "models.png").read_bytes()[:4] == b"\x89PNG"
