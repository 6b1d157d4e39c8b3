"""Native reduced-precision detection: CPU flags, oneDNN's ISA cap, CUDA."""
import pytest
import torch

from mmseg_aspp import hardware

pytestmark = pytest.mark.stack_independent  # reads torch's view of the CPU only


@pytest.fixture
def cpu_flags(monkeypatch):
    """Pretend the CPU has exactly the given capability flags; forget earlier answers."""
    def pretend(**flags):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: flags)
        hardware._native.cache_clear()

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    yield pretend
    hardware._native.cache_clear()


@pytest.mark.parametrize("flags, bf16, fp16", [
    ({"avx2": True}, False, False),  # AVX2-only: oneDNN emulates both
    ({"avx512_f": True, "avx512_vnni": True}, False, False),  # AVX-512 without BF16 units
    ({"avx512_f": True, "avx512_bf16": True}, True, False),
    ({"amx_bf16": True, "amx_fp16": True}, True, True),
])
def test_cpu_flags_decide(cpu_flags, flags, bf16, fp16):
    cpu_flags(**flags)
    assert hardware.native_reduced_precision("cpu", torch.bfloat16) is bf16
    assert hardware.native_reduced_precision("cpu", torch.float16) is fp16
    assert hardware.native_reduced_precision("cpu", torch.float32)


@pytest.mark.parametrize("cap, native", [("AVX2", False), ("avx512_core", False), ("AVX512_CORE_BF16", True),
                                         ("ALL", True)])
def test_onednn_isa_cap_turns_units_off(cpu_flags, monkeypatch, cap, native):
    cpu_flags(avx512_bf16=True)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert hardware.native_reduced_precision(torch.device("cpu"), torch.bfloat16) is native


@pytest.mark.parametrize("has_bf16_units", [True, False])  # e.g. A100/H100 vs T4/V100, which emulate bf16
def test_cuda_bf16_follows_the_gpu(monkeypatch, has_bf16_units):
    hardware._native.cache_clear()
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: including_emulation or has_bf16_units)
    try:
        assert hardware.native_reduced_precision("cuda:0", torch.bfloat16) is has_bf16_units
        assert hardware.native_reduced_precision("cuda:0", torch.float16)
    finally:
        hardware._native.cache_clear()
