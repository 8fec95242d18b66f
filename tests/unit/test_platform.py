"""`dtype: auto` resolution and its override (rlkit/platform.py)."""

from __future__ import annotations

import pytest
import torch

from rlkit.platform import cpu_has_native_bf16, resolve_dtype


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU `auto` is bf16 whatever the CPU")
@pytest.mark.parametrize(("forced", "want"), [("0", "float32"), ("1", "bfloat16")])
def test_the_override_decides_what_auto_means(monkeypatch, forced, want):
    monkeypatch.setenv("RLKIT_NATIVE_BF16", forced)
    cpu_has_native_bf16.cache_clear()
    try:
        assert resolve_dtype("auto") == want
        assert resolve_dtype("float16") == "float16"  # explicit dtypes pass through
    finally:
        cpu_has_native_bf16.cache_clear()


def test_without_override_auto_follows_cpuinfo(monkeypatch):
    monkeypatch.delenv("RLKIT_NATIVE_BF16", raising=False)
    cpu_has_native_bf16.cache_clear()
    flags = open("/proc/cpuinfo").read()
    assert cpu_has_native_bf16() == any(f" {f}" in flags for f in ("avx512_bf16", "amx_bf16"))
