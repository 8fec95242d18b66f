"""Token weights (rlkit/algorithms/token_weights.py): HAPO's entropy score and THR, against
hand-computed values (arithmetic in the comments) and a naive full-vocabulary THR."""

import contextlib
import math

import pytest
import torch
from trainer_helpers import T, tiny_batch, tiny_llama

from rlkit.algorithms.token_weights import (
    THR,
    GroupChunk,
    entropy_score,
    thr_influence,
    thr_prediction_error,
    thr_token_weights,
)
from rlkit.trainer.prefix import ForwardBatch, compute_logprobs
from rlkit.trainer.token_pass import token_pass
from rlkit.trainer.update import ForwardSettings

F64 = torch.float64
E = math.e


def t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


def m(x):
    return torch.tensor(x, dtype=torch.bool)


# --------------------------------------------------------------------------- entropy_score

# Valid entropies e^0..e^4 (log-entropies l = 0, 1, 2, 3, 4), scattered over two rows; padding 99.
ENT = t([[E**3, 1.0, E**4], [E**2, E**1, 99.0]])
ENT_MASK = m([[1, 1, 1], [1, 1, 0]])
# pivot 0.8: sorted index round(0.8 * 4) = round(3.2) = 3 -> m = 3
# sigma = sqrt(mean((l - 3)^2)) = sqrt((9 + 4 + 1 + 0 + 1) / 5) = sqrt(3)
# h = (l - 3)/sqrt3 = [-3, -2, -1, 0, 1]/sqrt3; max h = 1/sqrt3, min h = -3/sqrt3
# ĥ (l = 0..4) = [-1, -2/3, -1/3, 0, 1]; layout of ENT: [[l=3, l=0, l=4], [l=2, l=1, pad]]


def test_entropy_score_hand_values():
    out = entropy_score(ENT, ENT_MASK)
    torch.testing.assert_close(out, t([[0.0, -1.0, 1.0], [-1 / 3, -2 / 3, 0.0]]))


def test_entropy_score_released_sign_maps_lowest_entropy_to_plus_one():
    # negative side divided by min(h) = -3/sqrt3 itself: [-3, -2, -1] / -3 = [1, 2/3, 1/3]
    out = entropy_score(ENT, ENT_MASK, released_sign=True)
    torch.testing.assert_close(out, t([[0.0, 1.0, 1.0], [1 / 3, 2 / 3, 0.0]]))


def test_entropy_score_nearest_quantile_rounds_half_to_even():
    # l = [0, 1, 2, 3], pivot 0.5: index round(0.5 * 3) = round(1.5) = 2 -> m = 2
    # sigma = sqrt((4 + 1 + 0 + 1) / 4) = sqrt(1.5); h ∝ [-2, -1, 0, 1] -> ĥ = [-1, -1/2, 0, 1]
    # (index floor(1.5) = 1 would give ĥ = [-1, 0, 1/2, 1])
    out = entropy_score(t([[1.0, E, E**2, E**3]]), m([[1, 1, 1, 1]]), pivot=0.5)
    torch.testing.assert_close(out, t([[-1.0, -0.5, 0.0, 1.0]]))


@pytest.mark.parametrize("pivot", [0.0, 1.0, 1.5, -0.1])
def test_entropy_score_pivot_outside_unit_interval_raises(pivot):
    with pytest.raises(ValueError, match="pivot"):
        entropy_score(ENT, ENT_MASK, pivot=pivot)


def test_entropy_score_empty_mask_is_zero():
    out = entropy_score(ENT, torch.zeros(2, 3, dtype=torch.bool))
    assert torch.equal(out, torch.zeros(2, 3))


# --------------------------------------------------------------------------- THR, hand case

# H = 2, V = 3, weight rows w0 = (ln 2, 0), w1 = w2 = (0, 0), no bias, temperature 1.
# Row 0 (correct): h0 = (1, 0), target 0; row 1 (wrong): h1 = (1, 2), target 1.
# Both have logits z = h·w = [ln2, 0, 0] -> p = [2, 1, 1] / 4 = [1/2, 1/4, 1/4].
# V* = {0, 1} (token 2 unused; its 1/4 is dropped, no renormalisation):
#   g0 = e_0 - p[V*] = [1/2, -1/4],  g1 = e_1 - p[V*] = [-1/2, 3/4]
#   M+ = g0 h0^T
#   s0 = g0^T M+ h0 = <g0,g0><h0,h0> = (1/4 + 1/16) * 1 = 5/16
#   s1 = <g0,g1><h0,h1> = (-1/4 - 3/16) * (1*1 + 0*2) = -7/16
# A second, padded column carries junk that must score 0.
W3 = t([[math.log(2.0), 0.0], [0.0, 0.0], [0.0, 0.0]])


def hand_chunk(correct=(True, False)) -> GroupChunk:
    hidden = t([[[1.0, 0.0], [7.0, -3.0]], [[1.0, 2.0], [5.0, 5.0]]])  # [2, 2, 2]
    return GroupChunk(hidden=hidden, targets=torch.tensor([[0, 2], [1, 2]]),
                      logprobs=t([[math.log(0.5), -9.0], [math.log(0.25), -9.0]]),
                      mask=m([[1, 0], [1, 0]]), correct=m(list(correct)), weight=W3, bias=None,
                      temperature=1.0, vocab=torch.tensor([0, 1]), chunk_size=1)


def test_thr_prediction_error_hand_values():
    c = hand_chunk()
    g = thr_prediction_error(c.hidden[:, 0], W3, None, c.targets[:, 0].contiguous(), c.logprobs[:, 0], c.vocab, temperature=1.0)
    torch.testing.assert_close(g, t([[0.5, -0.25], [-0.5, 0.75]]))


def test_thr_influence_hand_values():
    s = thr_influence(hand_chunk())
    torch.testing.assert_close(s, t([[5 / 16, 0.0], [-7 / 16, 0.0]]))
    # the correct token alone: its self-influence <g0,g0><h0,h0>
    g0, h0 = t([0.5, -0.25]), t([1.0, 0.0])
    torch.testing.assert_close(s[0, 0], (g0 @ g0) * (h0 @ h0))


def test_thr_influence_no_correct_row_is_zero():
    assert torch.equal(thr_influence(hand_chunk((False, False))), torch.zeros(2, 2))


# --------------------------------------------------------------------------- THR, chunked pass vs naive


def naive_thr(hidden, weight, ids, mask, groups, correct, temperature):
    """s_i = sum over correct tokens j of the group: <g_j, g_i>_{V*} <h_j, h_i>, full-vocab softmax."""
    h = hidden.double()
    p = torch.softmax(h @ weight.double().t() / temperature, -1)  # [N, T, V]
    g = torch.nn.functional.one_hot(ids, weight.shape[0]).double() - p
    s = torch.zeros(ids.shape, dtype=F64)
    for k in groups.unique():
        rows = (groups == k).nonzero().flatten().tolist()
        vocab = torch.unique(ids[rows][mask[rows]])
        toks = [(i, a) for i in rows for a in range(ids.shape[1]) if mask[i, a]]
        for i, a in toks:
            for j, b in toks:
                if correct[j]:
                    s[i, a] += (g[j, b, vocab] @ g[i, a, vocab]) * (h[j, b] @ h[i, a])
    return s


@pytest.mark.parametrize("shared_prefix", [False, True])
@pytest.mark.parametrize("budget", [10_000, 12])
def test_token_pass_thr_scores_match_naive_full_vocab(budget, shared_prefix):
    model, batch = tiny_llama(), tiny_batch()
    correct = m([1, 0, 0, 1, 0, 0, 0, 0])  # group 1 (rows 4-7) has no correct row
    fs = ForwardSettings(temperature=0.7, chunk_size=5, pad_id=0, shared_prefix=shared_prefix,
                         micro_batch_tokens=budget, gen_budget=T)
    tp = token_pass(model, batch, fs, contextlib.nullcontext, weighter=THR(), correct=correct)
    if budget == 10_000:
        assert tp.forwards == 1 and tp.split_groups == 0
    else:
        assert tp.split_groups > 0 and tp.forwards > 2
    fb = ForwardBatch(prompt_ids=batch.prompt_ids, completion_ids=batch.completion_ids,
                      completion_mask=batch.completion_mask, group_ids=batch.group_ids,
                      prompt_index=batch.prompt_index)
    with torch.no_grad():
        out = compute_logprobs(model, fb, shared_prefix=False, temperature=0.7, with_hidden=True)
    weight = model.get_output_embeddings().weight.detach()
    # the hidden states are the ones the logprobs come from
    full = torch.log_softmax(out.hidden.double() @ weight.double().t() / 0.7, -1)
    lp = full.gather(-1, batch.completion_ids[..., None])[..., 0] * batch.completion_mask
    torch.testing.assert_close(lp, out.logprobs.double(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tp.logprobs, out.logprobs, rtol=1e-4, atol=1e-5)
    ref = naive_thr(out.hidden, weight, batch.completion_ids, batch.completion_mask, batch.group_ids,
                    correct, 0.7)
    assert ref[:4][batch.completion_mask[:4]].abs().min() > 0  # a non-trivial reference
    scale = ref.abs().max().item()
    torch.testing.assert_close(tp.scores.double(), ref, rtol=1e-4, atol=1e-5 * scale)
    assert torch.equal(tp.scores[4:], torch.zeros(4, T))


# --------------------------------------------------------------------------- thr_token_weights

# Groups [0, 0, 1, 1]; only row 0 is correct, so group 1 has no influence (weights 1).
# Advantages [1, -1, 0.5, -0.5]; THR = A * s on row 0: [2, -1], row 1: [-3, 0.5, -0.2].
SCORES = t([[2.0, -1.0, 50.0], [3.0, -0.5, 0.2], [5.0, -5.0, 1.0], [1.0, 1.0, 50.0]])
MASK = m([[1, 1, 0], [1, 1, 1], [1, 1, 1], [1, 1, 0]])  # 10 valid tokens, 5 in group 0
ADV = t([1.0, -1.0, 0.5, -0.5])
CORRECT = m([1, 0, 0, 0])
GIDS = torch.tensor([7, 7, 3, 3])


def weights(**kw):
    return thr_token_weights(SCORES, ADV, CORRECT, GIDS, MASK, **kw)


def test_thr_reweight_signs_and_metrics():
    w, met = weights(p=0.5)
    # sign(THR) row 0 [+, -] -> [1.5, 0.5]; row 1 [-, +, -] -> [0.5, 1.5, 0.5]; group 1 -> 1
    torch.testing.assert_close(w, t([[1.5, 0.5, 0.0], [0.5, 1.5, 0.5], [1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]))
    torch.testing.assert_close(met["thr/pos_frac"], t(2 / 5))  # 2 of group 0's 5 tokens have THR > 0
    torch.testing.assert_close(met["thr/weight_mean"], t(9.5 / 10))  # (2 + 2.5 + 3 + 2) / 10
    torch.testing.assert_close(met["thr/gated_frac"], t(1.0))


def test_thr_negative_p_reverses():
    w, _ = weights(p=-0.5)
    torch.testing.assert_close(w, t([[0.5, 1.5, 0.0], [1.5, 0.5, 1.5], [1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]))


# Gate: tau_0 = min over the correct rows of the row mean of s = (2 - 1) / 2 = 0.5.
# |s| > 0.5 on row 0: [2, 1] both; row 1: [3, 0.5, 0.2] -> only the first (0.5 is not > 0.5).
def test_thr_gate_reweight():
    w, met = weights(p=0.5, gate_beta=1.0)
    torch.testing.assert_close(w, t([[1.5, 0.5, 0.0], [0.5, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]))
    torch.testing.assert_close(met["thr/gated_frac"], t(3 / 5))
    torch.testing.assert_close(met["thr/weight_mean"], t(9.5 / 10))  # (2 + 2.5 + 3 + 2) / 10
    torch.testing.assert_close(met["thr/pos_frac"], t(2 / 5))  # the gate does not change THR's sign


def test_thr_only_mode_defaults_gate_to_one():
    w, met = weights(mode="only")
    # gated tokens 1, other group-0 tokens 0, group without a correct row 1, padding 0
    torch.testing.assert_close(w, t([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]))
    torch.testing.assert_close(met["thr/weight_mean"], t(8.0 / 10))  # (2 + 1 + 3 + 2) / 10
    # a larger gate_beta: tau = 2 * 0.5 = 1 -> only |s| = 2 and 3 pass
    w2, _ = weights(mode="only", gate_beta=2.0)
    torch.testing.assert_close(w2[:2], t([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))


@pytest.mark.parametrize("p", [1.0, -1.0, 1.5])
def test_thr_weights_p_out_of_range_raises(p):
    with pytest.raises(ValueError, match=r"p must be in \(-1, 1\)"):
        weights(p=p)


def test_thr_weights_unknown_mode_raises():
    with pytest.raises(ValueError, match="unknown THR mode 'gate'"):
        weights(mode="gate")


# --------------------------------------------------------------------------- THR class


@pytest.mark.parametrize("kw, match", [
    ({"p": 1.0}, "p: must be in"),
    ({"p": -2.0}, "p: must be in"),
    ({"mode": "x"}, "mode: unknown THR mode 'x'"),
    ({"gate_beta": -1}, "gate_beta: must be >= 0"),
])
def test_thr_class_rejects_bad_params(kw, match):
    with pytest.raises(ValueError, match=match):
        THR(**kw)


def test_thr_class_declares_needs_and_forwards_params():
    from rlkit.algorithms.token_weights import TokenWeightInputs

    assert THR.needs_hidden and THR.needs_group
    inputs = TokenWeightInputs(mask=MASK, advantages=ADV, rewards=CORRECT.float(), correct=CORRECT,
                               group_ids=GIDS, entropy=torch.ones(4, 3), scores=SCORES)
    feats = THR(p=0.5, gate_beta=1.0)(inputs)
    assert torch.equal(feats.token_weights, weights(p=0.5, gate_beta=1.0)[0])
    assert feats.entropy_score is None and set(feats.metrics) >= {"thr/pos_frac", "thr/weight_mean"}
    inputs.scores = None
    with pytest.raises(ValueError, match="influence scores"):
        THR()(inputs)
