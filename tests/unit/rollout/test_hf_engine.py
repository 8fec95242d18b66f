"""HFEngine: the transformers.generate reference engine on the real SmolLM2 (no vLLM)."""

import pytest
import torch

from rlkit.rollout import SamplingConfig, build_engine
from rlkit.rollout.hf_engine import HFEngine

PROMPTS = ["What is 2 + 3? Answer with only the number.", "Name a color."]


@pytest.fixture(scope="module")
def hf_engine(smollm2_path):
    return HFEngine(smollm2_path, dtype="float32", seed=0)


def _trainer_logprobs(model, prompt, completion, temperature):
    """fp32 full-logits log_softmax(logits / T) of `completion` given `prompt`: [k]."""
    x = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(x).logits[0, len(prompt) - 1 : -1].float() / temperature  # [k, V]
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)


@pytest.fixture(scope="module")
def sampled(hf_engine):
    return hf_engine.generate(PROMPTS, 2, SamplingConfig(temperature=0.7, max_new_tokens=12))


def test_hf_logprobs_are_processed_distribution(hf_engine, sampled):
    b = sampled
    assert b.num_rows == 4 and b.group_ids.tolist() == [0, 0, 1, 1]
    for i in range(b.num_rows):
        k = int(b.completion_lengths[i])
        comp = b.completion_ids[i, :k].tolist()
        ref = _trainer_logprobs(hf_engine.model, b.prompt_ids[b.prompt_index[i]], comp, 0.7)
        # same fp32 model, the only difference is batching/padding: ~1e-5
        torch.testing.assert_close(b.engine_logprobs[i, :k], ref, atol=2e-4, rtol=0)


def test_hf_finish_reasons_and_stop_strings(hf_engine, sampled):
    eos = hf_engine.tokenizer.eos_token_id
    b = sampled
    for i, reason in enumerate(b.finish_reason):
        k = int(b.completion_lengths[i])
        last = int(b.completion_ids[i, k - 1])
        assert reason == ("stop" if last == eos else "length")
        assert (reason == "length") == (k == 12 and last != eos)
    # Greedy answer "2 + 3 = 5", in fp32 on every CPU (the engine is built with dtype="float32",
    # not "auto"). It is not a near tie: "2" beats "The" by 0.47 nat and " =" beats " is" by
    # 0.64 nat, and both runner-up branches also say 5 ("The answer is 5.", "2 + 3 is 5").
    g = hf_engine.generate(PROMPTS[:1], 1, SamplingConfig(greedy=True, max_new_tokens=16, stop=["5"]))
    assert g.finish_reason == ["stop"] and "5" not in g.completion_texts[0]
    ids = g.completion_ids[0, : int(g.completion_lengths[0])].tolist()
    assert "5" in hf_engine.tokenizer.decode(ids) and "5" not in hf_engine.tokenizer.decode(ids[:-1])


def test_hf_update_weights_and_build_engine(tiny_model_path):
    # The recipe passes vLLM settings to every engine kind; the HF engine must accept the call.
    engine = build_engine("hf", tiny_model_path, dtype="float32", max_model_len=512,
                          cpu_kvcache_gib=1, enforce_eager=True, distributed_executor_backend=None)
    assert isinstance(engine, HFEngine)
    w = engine.model.model.norm.weight
    engine.update_weights([("model.norm.weight", torch.full_like(w, 2.0))])
    assert torch.all(w == 2.0) and engine.sync_count == 1
    with pytest.raises(KeyError):
        engine.update_weights([("no.such.weight", w)])
    with pytest.raises(ValueError, match="unknown engine kind"):
        build_engine("bogus", tiny_model_path)
