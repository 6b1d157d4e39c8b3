"""Reusable CPU buffers for the core's outputs and temporaries.

On CPU every large tensor PyTorch frees goes back to the OS, and the next one of that size is
page-faulted in anew as it is first written: on a 2-core KVM guest writing a fresh 32 MB
output took 51 ms where writing it again took under 2 (a ResNet-D8's layer3 makes dozens of
them per image, and Winograd's chunk buffers hundreds of smaller ones). GPUs have PyTorch's
caching allocator; here ``empty`` hands out blocks it keeps, once nothing else uses them.

A block is free when its storage has no other user: every tensor viewing it (a caller's output,
a tensor autograd saved, a view of either) holds a reference, so a block is never handed out
twice while any of them lives.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

# Free blocks beyond this many bytes are released (largest first) before a new one is made.
MAX_FREE_BYTES = 512 * 2**20
# Requests smaller than this are left to PyTorch's allocator: glibc serves them from its heap.
MIN_BYTES = 256 * 2**10

_blocks: list[Tensor] = []  # uint8 CPU tensors
_USE_COUNT = getattr(torch._C, "_storage_Use_Count", None)  # without it, no block is kept


def _in_use(block: Tensor) -> bool:
    # The pool's tensor and the temporary storage object count one each.
    return _USE_COUNT(block.untyped_storage()._cdata) > 2


def empty(shape: tuple[int, ...] | list[int], like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """An uninitialised contiguous tensor of ``shape`` on ``like``'s device, in ``dtype`` (default
    ``like``'s), from a kept block where one of at most twice the size is free."""
    dtype = dtype or like.dtype
    nbytes = math.prod(shape) * dtype.itemsize
    if like.device.type != "cpu" or nbytes < MIN_BYTES or torch.compiler.is_compiling() or _USE_COUNT is None:
        return torch.empty(shape, dtype=dtype, device=like.device)
    free = [b for b in _blocks if nbytes <= b.numel() <= 2 * nbytes and not _in_use(b)]
    if free:
        block = min(free, key=Tensor.numel)
    else:
        _release(MAX_FREE_BYTES - nbytes)
        block = torch.empty(nbytes, dtype=torch.uint8)
        _blocks.append(block)
    return block[:nbytes].view(dtype).view(shape)


def _release(keep: int) -> None:
    """Drop free blocks, largest first, until at most ``keep`` bytes of them are left."""
    free = sorted((b for b in _blocks if not _in_use(b)), key=Tensor.numel, reverse=True)
    total = sum(b.numel() for b in free)
    dropped = set()
    for block in free:
        if total <= keep:
            break
        dropped.add(id(block))
        total -= block.numel()
    _blocks[:] = [b for b in _blocks if id(b) not in dropped]


def kept_bytes() -> int:
    """Bytes the pool holds (in use or free)."""
    return sum(b.numel() for b in _blocks)
