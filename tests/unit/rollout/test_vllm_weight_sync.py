"""Weight sync into a live vLLM engine: perturbed full weights, then a LoRA adapter (merged).

The engine here runs in float32 on every CPU (its own engine, not the shared one, whose weights
other tests rely on and whose dtype is bf16 or fp32 depending on the CPU): greedy decoding
compares argmaxes, and bf16 vs fp32 can flip a near-tie and then diverge for the rest of the
row. The perturbed and LoRA models have near ties on these paths (smallest gap between the two
top logprobs 0.009 nat, "A" vs "The" for the rhyme prompt), but in fp32 the engine and
transformers agree to 5e-5 nat on every top-5 logprob of these paths (measured, vLLM 0.32),
180x below that gap.
"""

import logging

import pytest
import torch

from rlkit.rollout import SamplingConfig, render_prompts, trainer_weights_for_engine

pytestmark = pytest.mark.slow

PROMPTS = [
    "What is 2 + 3? Answer with only the number.",
    "Name a color.",
    "Write one word that rhymes with cat.",
    "What is the capital of France?",
]
MAX_NEW = 12
GREEDY = SamplingConfig(greedy=True, max_new_tokens=MAX_NEW)


@pytest.fixture(scope="module")
def fp32_engine(smollm2_path):
    from rlkit.rollout.vllm_engine import VLLMEngine  # vLLM is a dependency: a missing one fails

    engine = VLLMEngine(smollm2_path, dtype="float32", seed=0, enforce_eager=True,
                        cpu_kvcache_gib=1, max_model_len=512)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def trainer(smollm2_path):
    """A transformers copy of the model, perturbed as a few noisy training steps would."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05 * p.std())
    return model


def hf_greedy(model, prompt_ids):
    """transformers.generate, greedy, one prompt at a time (no padding): B token lists."""
    out = []
    for ids in prompt_ids:
        x = torch.tensor([ids])
        with torch.no_grad():
            y = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                               max_new_tokens=MAX_NEW, temperature=None, top_p=None, top_k=None)
        out.append(y[0, len(ids):].tolist())
    return out


def engine_greedy(engine):
    b = engine.generate(PROMPTS, 1, GREEDY)
    return [b.completion_ids[i, : int(k)].tolist() for i, k in enumerate(b.completion_lengths)]


def test_full_weight_sync_then_lora_sync(fp32_engine, trainer, caplog):
    _, prompt_ids = render_prompts(fp32_engine.tokenizer, PROMPTS, chat_template=True)
    before = engine_greedy(fp32_engine)
    want = hf_greedy(trainer, prompt_ids)
    assert want != before, "perturbation too small to test anything"

    with caplog.at_level(logging.DEBUG, logger="rlkit.rollout.vllm_engine"):  # the sync line is DEBUG
        fp32_engine.update_weights(trainer_weights_for_engine(trainer))
    assert engine_greedy(fp32_engine) == want
    assert fp32_engine.sync_count == 1 and fp32_engine.sync_seconds > 0
    assert any("weight sync #1" in r.getMessage() for r in caplog.records)

    # LoRA: random, non-zero B so the adapter changes the outputs; the engine gets W + s*B@A.
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    cfg = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj", "up_proj"],
                     init_lora_weights=False)
    peft_model = get_peft_model(trainer, cfg).eval()
    want_lora = hf_greedy(peft_model, prompt_ids)  # the trainer's unmerged forward
    assert want_lora != want, "adapter does not change greedy outputs"
    fp32_engine.update_weights(trainer_weights_for_engine(peft_model))
    assert engine_greedy(fp32_engine) == want_lora
    assert fp32_engine.sync_count == 2
    assert not peft_model.base_model.model.model.layers[0].self_attn.q_proj.merged
