"""Shared-prefix (Prefix Grouper, arXiv 2506.05433) forward vs plain forward vs a manual
per-sequence forward, on a tiny random Llama in fp32."""

import dataclasses

import pytest
import torch
import transformers

from rlkit.trainer.prefix import (
    ForwardBatch,
    compute_logprobs,
    logprobs_from_layout,
    plain_logprobs,
    shared_prefix_layout,
    shared_prefix_logprobs,
)

V = 97


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=V,
    )
    return transformers.LlamaForCausalLM._from_config(
        cfg, attn_implementation="sdpa", dtype=torch.float32
    ).eval()


def _batch(lengths, prompt_index, prompts, T=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    N = len(lengths)
    ids = torch.randint(1, V, (N, T), generator=g)
    mask = torch.arange(T) < torch.tensor(lengths)[:, None]  # [N, T]
    ids[~mask] = 0
    pidx = torch.tensor(prompt_index)
    return ForwardBatch(prompt_ids=prompts, completion_ids=ids, completion_mask=mask,
                        group_ids=pidx.clone(), prompt_index=pidx)


@pytest.fixture
def batch():
    # B = 2 prompts of different lengths, G = 4 each, unequal lengths incl. length-1 completions
    b = _batch([3, 1, 7, 2, 4, 6, 1, 5], [0, 0, 0, 0, 1, 1, 1, 1], [[5, 6, 7, 8, 9], [11, 12, 13]])
    b.completion_mask[2, 3] = False  # a masked token inside a completion: context, no logprob
    return b


def _manual(model, batch):
    """Ground truth: one model(...) call per row on exactly [prompt; completion[:len]]."""
    lengths = batch.completion_lengths.tolist()
    out = torch.zeros(batch.completion_ids.shape)
    for i, n in enumerate(lengths):
        prompt = batch.prompt_ids[int(batch.prompt_index[i])]
        ids = torch.tensor(prompt + batch.completion_ids[i, :n].tolist())[None]  # [1, P+n]
        logp = model(ids).logits[0].log_softmax(-1)  # [P+n, V]
        P = len(prompt)
        out[i, :n] = logp[P - 1 : P - 1 + n].gather(-1, ids[0, P:, None]).squeeze(-1)
    return torch.where(batch.completion_mask, out, 0.0)


def test_layout_by_hand():
    # prompt [1, 2, 3]; completions [4, 5] and [6]  ->  row [1, 2, 3, 4, 5, 6]
    # positions restart at P = 3: [0, 1, 2, 3, 4, 3]; predictors: c0 <- cols [2, 3], c1 <- col [2]
    b = ForwardBatch([[1, 2, 3]], torch.tensor([[4, 5], [6, 0]]),
                     torch.tensor([[True, True], [True, False]]), torch.tensor([0, 0]))
    lay = shared_prefix_layout(b)
    assert lay.input_ids.tolist() == [[1, 2, 3, 4, 5, 6]]
    assert lay.position_ids.tolist() == [[0, 1, 2, 3, 4, 3]]
    assert lay.source_index[lay.valid].tolist() == [2, 3, 2]
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],  # c0 token 0: prefix + itself
        [1, 1, 1, 1, 1, 0],
        [1, 1, 1, 0, 0, 1],  # c1 token 0: prefix + itself, not c0
    ], dtype=torch.bool)
    assert torch.equal(lay.attention_mask[0, 0], expected)


def test_plain_and_shared_match_manual_forward(model, batch):
    ref = _manual(model, batch)
    with torch.no_grad():
        plain = plain_logprobs(model, batch, chunk_size=5)
        shared = shared_prefix_logprobs(model, batch, chunk_size=5)
    assert plain.logprobs.shape == shared.logprobs.shape == batch.completion_ids.shape
    torch.testing.assert_close(plain.logprobs, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(shared.logprobs, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(shared.entropy, plain.entropy, rtol=1e-4, atol=1e-5)
    assert torch.isfinite(shared.entropy).all()
    assert (shared.logprobs[~batch.completion_mask] == 0).all()


def _param_grads(model, fn, batch, coef):
    model.zero_grad(set_to_none=True)
    out = fn(model, batch, chunk_size=5, entropy_grad=True)
    ((out.logprobs * coef).sum() + 0.1 * out.entropy.sum()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_parameter_gradients_match(model, batch):
    coef = torch.randn(batch.completion_ids.shape, generator=torch.Generator().manual_seed(1))
    g_plain = _param_grads(model, plain_logprobs, batch, coef)
    g_shared = _param_grads(model, shared_prefix_logprobs, batch, coef)
    model.zero_grad(set_to_none=True)
    assert g_plain.keys() == g_shared.keys()
    for name in g_plain:
        torch.testing.assert_close(g_shared[name], g_plain[name], rtol=1e-4, atol=1e-6, msg=name)


def _break_first_token(lay, batch):
    # predict completion token 0 from the packed token before it (the previous completion's
    # last token) instead of the last prefix token: the gotcha in rlkit/trainer/prefix.py's docstring
    src = lay.source_index.clone()
    src[:, 0] = torch.where(src[:, 1] > 0, src[:, 1] - 1, src[:, 0])
    return dataclasses.replace(lay, source_index=src)


def _break_positions(lay, batch):  # positions continue instead of restarting at P
    return dataclasses.replace(lay, position_ids=torch.arange(lay.input_ids.shape[1]).expand_as(lay.input_ids))


def _break_mask(lay, batch):  # plain causal mask: completions see earlier completions
    L = lay.input_ids.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool).tril().expand_as(lay.attention_mask)
    return dataclasses.replace(lay, attention_mask=causal | lay.attention_mask)


@pytest.mark.parametrize("breakage", [_break_first_token, _break_positions, _break_mask])
def test_wrong_layout_is_caught(model, batch, breakage):
    """The comparison above is sensitive: each plausible layout bug moves logprobs visibly."""
    ref = _manual(model, batch)
    lay = breakage(shared_prefix_layout(batch), batch)
    with torch.no_grad():
        bad = logprobs_from_layout(model, lay, batch).logprobs
    assert (bad - ref).abs().max() > 1e-3


def test_micro_batch_rows(model, batch):
    """A micro-batch (rows of both prompts, one prompt only partly) gives the full batch's rows."""
    rows = torch.tensor([1, 3, 4])
    with torch.no_grad():
        full = compute_logprobs(model, batch, shared_prefix=True).logprobs
        sub = compute_logprobs(model, batch.select(rows), shared_prefix=True).logprobs
        # unused prompts may also be left in: only the referenced ones get a packed row
        sub_b = dataclasses.replace(batch, completion_ids=batch.completion_ids[rows],
                                    completion_mask=batch.completion_mask[rows],
                                    group_ids=batch.group_ids[rows], prompt_index=batch.prompt_index[rows])
        sub2 = compute_logprobs(model, sub_b, shared_prefix=False).logprobs
    torch.testing.assert_close(sub, full[rows], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sub2, full[rows], rtol=1e-4, atol=1e-5)


def test_temperature_matches_manual(model, batch):
    tau = 0.6
    with torch.no_grad():
        out = shared_prefix_logprobs(model, batch, temperature=tau).logprobs
        ids = torch.tensor([batch.prompt_ids[0] + batch.completion_ids[0, :3].tolist()])
        ref = (model(ids).logits[0] / tau).log_softmax(-1)[4:7].gather(-1, ids[0, 5:, None]).squeeze(-1)
    torch.testing.assert_close(out[0, :3], ref, rtol=1e-4, atol=1e-5)


def test_eager_attention_gets_additive_mask(model, batch):
    """Eager attention adds the 4D mask to the scores: a bool mask would add 0/1 silently."""
    eager = transformers.LlamaForCausalLM._from_config(
        model.config, attn_implementation="eager", dtype=torch.float32
    ).eval()
    eager.load_state_dict(model.state_dict())
    with torch.no_grad():
        out = shared_prefix_logprobs(eager, batch).logprobs
    torch.testing.assert_close(out, _manual(model, batch), rtol=1e-4, atol=1e-5)
