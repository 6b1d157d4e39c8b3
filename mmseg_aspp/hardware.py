"""What the device computes natively: reduced precision pays only where it has units for it.

Without them (e.g. an AVX2-only or AVX-512 CPU without AVX512_BF16/AMX), oneDNN
emulates bfloat16 with float32 arithmetic plus conversions: a bf16 matmul was
measured at 0.6 GFLOP/s against 31 GFLOP/s in float32 on one core.
"""
from __future__ import annotations

import os
import platform
import re
from functools import lru_cache

import torch

# oneDNN's ISA names in increasing order, as ONEDNN_MAX_CPU_ISA accepts them; a
# cap below the first ISA with a dtype's dot-product instructions makes oneDNN
# emulate that dtype even on hardware that has them.
_ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
                "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX",
                "AVX512_CORE_AMX", "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16", "ALL")
_FIRST_NATIVE_ISA = {torch.bfloat16: "AVX512_CORE_BF16", torch.float16: "AVX10_1_512"}
_CPU_FLAGS = {torch.bfloat16: ("avx512_bf16", "amx_bf16"), torch.float16: ("avx512_fp16", "amx_fp16")}


def _onednn_isa_allows(dtype: torch.dtype) -> bool:
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL").upper()
    if cap not in _ONEDNN_ISAS:
        return True
    return _ONEDNN_ISAS.index(cap) >= _ONEDNN_ISAS.index(_FIRST_NATIVE_ISA[dtype])


@lru_cache(maxsize=None)
def _native(device_type: str, device_index: int | None, dtype: torch.dtype) -> bool:
    if dtype not in _FIRST_NATIVE_ISA:
        return True  # float32 / float64
    if device_type == "cuda":
        if dtype == torch.float16:
            return True
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device_type != "cpu":
        return False
    capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    has_units = any(capabilities.get(flag, False) for flag in _CPU_FLAGS[dtype])
    return has_units and _onednn_isa_allows(dtype)


def native_reduced_precision(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether ``device`` has arithmetic units for ``dtype`` (decided once per device and dtype).

    Args:
        device: A CPU or CUDA device.
        dtype: ``torch.bfloat16`` or ``torch.float16`` (wider types are always native).

    Returns:
        True on CUDA for float16, and for bfloat16 where the GPU computes it
        (compute capability 8.0+); on CPU when it has AVX512_BF16 / AMX-BF16
        (AVX512-FP16 / AMX-FP16 for float16) and oneDNN is not capped below
        them by ``ONEDNN_MAX_CPU_ISA``.
    """
    device = torch.device(device)
    return _native(device.type, device.index, dtype)


@lru_cache(maxsize=None)
def device_model(device: torch.device | str) -> str:
    """The GPU's name, or the CPU's model name (from /proc/cpuinfo where there is one)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            return re.search(r"model name\s*:\s*(.*)", f.read()).group(1).strip()
    except (OSError, AttributeError):
        return platform.processor() or device.type
