"""What the hardware can do fast, decided once: the dtype `auto` resolves to.

bf16 is fast on GPUs and on CPUs with native bf16 instructions (AVX512-BF16 or AMX). On a CPU
without them (e.g. AVX2-only machines) bf16 matmuls are emulated: vLLM's CPU backend falls back
from oneDNN ("Failed to create oneDNN linear") and decodes about 5x slower than in fp32
(measured: SmolLM2-135M, 38 vs 190 tokens/s), and bf16 autocast slows training the same way.
So `dtype: auto` means bf16 where it is native and fp32 elsewhere.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path


@functools.cache
def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX in /proc/cpuinfo. `RLKIT_NATIVE_BF16=0` (or 1) overrides the answer,
    e.g. to run the test suite with the fp32 numerics of an AVX2-only machine on an AMX one."""
    forced = os.environ.get("RLKIT_NATIVE_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f" {flag}" in flags for flag in ("avx512_bf16", "amx_bf16"))


def resolve_dtype(name: str) -> str:
    """`auto` -> "bfloat16" on a GPU or a CPU with native bf16, else "float32"; others unchanged."""
    if name != "auto":
        return name
    import torch

    if torch.cuda.is_available() or cpu_has_native_bf16():
        return "bfloat16"
    return "float32"
