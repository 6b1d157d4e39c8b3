"""tools/benchmark.py on one small case: every output written, ratios and progress consistent."""
import json

import pytest

from tooling import load_tool


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
    assert data["meta"]["reduced_precision"] == "bfloat16"
    assert isinstance(data["meta"]["reduced_precision_native"], bool)
    assert data["meta"]["prepared_weight_cache_mb"] > 0  # eval calls prepared Winograd and tap kernels
    rows = {(r["mode"], r["impl"]): r for r in data["rows"]}
    expected = {(mode, impl) for mode in ("eval", "train") for impl in ("upstream", "ours", "ours bfloat16")}
    assert expected <= set(rows)
    for (mode, impl), row in rows.items():
        assert row["case"] == "head 16x16 b2" and row["median_ms"] > 0 and len(row["times_ms"]) == 1
        upstream_ms = rows[(mode, "upstream")]["median_ms"]
        assert row["ratio"] == pytest.approx(upstream_ms / row["median_ms"])
        assert row["limit_fraction"] > 0
    # Same weights and inputs: fp32 decisions match upstream's; bf16 mostly does.
    assert rows[("eval", "ours")]["argmax_agreement"] >= 0.99
    assert rows[("eval", "ours bfloat16")]["argmax_agreement"] >= 0.9
    assert rows[("train", "ours")]["argmax_agreement"] is None

    table = (tmp_path / "benchmark.md").read_text()
    assert "| head 16x16 b2 | eval | ours |" in table and "GEMM peak" in table
    assert (tmp_path / "benchmark.png").read_bytes()[:4] == b"\x89PNG"
