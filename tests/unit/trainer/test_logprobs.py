"""Chunked logprobs/entropy vs the naive reference, hand-computed values, and the
decoder/lm_head split on plain, tied and PEFT-LoRA tiny Llamas."""

import math

import pytest
import torch
import transformers

from rlkit.trainer.logprobs import (
    causal_lm_hidden,
    lm_head_of,
    naive_logprobs,
    selective_logprobs,
)

ATOL = 1e-5


def _inputs(seed=0, N=3, T=37, H=32, V=211, bias=False):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, T, H, generator=g, requires_grad=True)
    weight = (0.3 * torch.randn(V, H, generator=g)).requires_grad_()
    b = torch.randn(V, generator=g).requires_grad_() if bias else None
    targets = torch.randint(0, V, (N, T), generator=g)
    coef = torch.randn(N, T, generator=g)  # arbitrary upstream gradient
    return hidden, weight, b, targets, coef


def _run(fn, hidden, weight, b, targets, coef, ent_coef=0.0, **kw):
    lp, ent = fn(hidden, weight, targets, lm_head_bias=b, **kw)
    loss = (lp * coef).sum()
    if ent_coef:
        loss = loss + ent_coef * ent.sum()
    params = [hidden, weight] + ([b] if b is not None else [])
    return lp, ent, torch.autograd.grad(loss, params)


@pytest.mark.parametrize(
    "temperature,bias,chunk_size",
    [(1.0, False, 16), (0.7, True, 10), (1.3, False, 4096)],  # 111 rows: ragged, ragged, one chunk
)
def test_chunked_matches_naive_values_and_grads(temperature, bias, chunk_size):
    args = _inputs(bias=bias)
    lp_c, ent_c, g_c = _run(selective_logprobs, *args, temperature=temperature, chunk_size=chunk_size)
    lp_n, ent_n, g_n = _run(naive_logprobs, *args, temperature=temperature)
    assert lp_c.shape == ent_c.shape == (3, 37)
    assert (lp_c - lp_n).abs().max() < ATOL
    assert (ent_c - ent_n).abs().max() < ATOL
    for gc, gn in zip(g_c, g_n, strict=True):  # hidden, weight (, bias)
        assert (gc - gn).abs().max() < ATOL


def test_entropy_detached_by_default_and_differentiable_on_request():
    hidden, weight, b, targets, coef = _inputs(seed=1)
    _, ent = selective_logprobs(hidden, weight, targets, chunk_size=8)
    assert not ent.requires_grad
    _, no_ent = selective_logprobs(hidden, weight, targets, with_entropy=False)
    assert no_ent is None
    # entropy bonus: gradient of logprob term + 0.5 * entropy matches autograd of the naive path
    kw = dict(temperature=0.8, entropy_grad=True, ent_coef=0.5)
    _, ent_c, g_c = _run(selective_logprobs, hidden, weight, b, targets, coef, chunk_size=8, **kw)
    _, ent_n, g_n = _run(naive_logprobs, hidden, weight, b, targets, coef, **kw)
    assert ent_c.requires_grad
    for gc, gn in zip(g_c, g_n, strict=True):
        assert (gc - gn).abs().max() < ATOL
    # entropy-only loss (no gradient arrives through the logprob output)
    g_only = torch.autograd.grad(
        selective_logprobs(hidden, weight, targets, entropy_grad=True, chunk_size=8)[1].sum(), weight
    )[0]
    g_ref = torch.autograd.grad(naive_logprobs(hidden, weight, targets, entropy_grad=True)[1].sum(), weight)[0]
    assert (g_only - g_ref).abs().max() < ATOL


def test_hand_computed_two_token_vocab():
    # H = 1, hidden = 1, W = [[0], [ln 3]] -> logits [0, ln 3] -> p = [1/4, 3/4]
    # logp(token 1) = ln(3/4) = -0.287682; H = -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.562335
    # temperature 2 -> logits [0, ln(3)/2] -> p = [1/(1+sqrt3), sqrt3/(1+sqrt3)] = [0.366025, 0.633975]
    hidden = torch.ones(1, 1, 1)
    weight = torch.tensor([[0.0], [math.log(3.0)]])
    target = torch.tensor([[1]])
    lp, ent = selective_logprobs(hidden, weight, target)
    assert lp.item() == pytest.approx(math.log(0.75), abs=1e-6)
    assert ent.item() == pytest.approx(0.562335, abs=1e-6)
    lp2, ent2 = selective_logprobs(hidden, weight, target, temperature=2.0)
    p1 = math.sqrt(3) / (1 + math.sqrt(3))
    assert lp2.item() == pytest.approx(math.log(p1), abs=1e-6)
    assert ent2.item() == pytest.approx(-(p1 * math.log(p1) + (1 - p1) * math.log(1 - p1)), abs=1e-6)


def test_bf16_inputs_give_fp32_outputs_close_to_fp32():
    hidden, weight, _, targets, coef = _inputs(seed=2)
    h16 = hidden.detach().bfloat16().requires_grad_()
    w16 = weight.detach().bfloat16().requires_grad_()
    lp, ent = selective_logprobs(h16, w16, targets, chunk_size=16)
    assert lp.dtype == ent.dtype == torch.float32
    lp_ref, ent_ref = naive_logprobs(h16.float(), w16.float(), targets)
    # bf16 matmul (fp32 accumulate), fp32 softmax: error dominated by bf16 rounding of logits
    assert (lp - lp_ref).abs().max() < 0.05
    assert (ent - ent_ref).abs().max() < 0.05
    gh, gw = torch.autograd.grad((lp * coef).sum(), [h16, w16])
    assert gh.dtype == gw.dtype == torch.bfloat16


# --- decoder / lm_head split on tiny transformers models -----------------------------------


def _tiny_llama(tie=False, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=101, tie_word_embeddings=tie,
    )
    return transformers.LlamaForCausalLM._from_config(
        cfg, attn_implementation="sdpa", dtype=torch.float32
    ).eval()


def _reference_logprobs(model, ids, mask):
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]  # [B, L-1, V]
    return logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # [B, L-1]


def _chunked_logprobs(model, ids, mask):
    hidden = causal_lm_hidden(model, ids, attention_mask=mask)[:, :-1]  # [B, L-1, H]
    weight, bias = lm_head_of(model)
    return selective_logprobs(hidden, weight, ids[:, 1:], lm_head_bias=bias, chunk_size=7)[0]


@pytest.mark.parametrize("tie", [False, True])
def test_causal_lm_hidden_matches_model_logits(tie):
    model = _tiny_llama(tie=tie)
    ids = torch.randint(0, 101, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # right padding in row 1
    ref = _reference_logprobs(model, ids, mask)
    got = _chunked_logprobs(model, ids, mask)
    keep = mask[:, 1:].bool()
    assert (got - ref)[keep].abs().max() < ATOL
    weight, _ = lm_head_of(model)
    assert (weight is model.get_input_embeddings().weight) == tie
    if tie:  # the shared Parameter receives the lm_head gradient
        got.sum().backward()
        assert model.get_input_embeddings().weight.grad.abs().sum() > 0


def test_causal_lm_hidden_under_peft_lora():
    import peft  # a dependency: a missing one fails
    model = _tiny_llama(seed=1)
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                           init_lora_weights=False)  # random B: the adapter changes the output
    torch.manual_seed(3)
    wrapped = peft.get_peft_model(model, lora).eval()
    ids = torch.randint(0, 101, (2, 9), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    ref = _reference_logprobs(wrapped, ids, mask)
    got = _chunked_logprobs(wrapped, ids, mask)
    assert (got - ref).abs().max() < ATOL
    with wrapped.disable_adapter():  # sanity: LoRA really acts, so the check above means something
        assert (_reference_logprobs(wrapped, ids, mask) - ref).abs().max() > 1e-3
    # gradient reaches the LoRA parameters through causal_lm_hidden
    got.sum().backward()
    lora_grads = [p.grad for n, p in wrapped.named_parameters() if "lora_" in n]
    assert lora_grads and all(g is not None and g.abs().sum() > 0 for g in lora_grads)
