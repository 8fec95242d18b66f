"""The update room (rlkit/trainer/update.py) on small hand-made batches and tiny models (no engine)."""

from __future__ import annotations

import copy

import pytest
import torch
from trainer_helpers import T, sgd_policy, tiny_batch, tiny_llama

from rlkit.algorithms.losses import LossInputs, LossOutput, PolicyLoss, build_loss
from rlkit.trainer.update import (
    ForwardSettings,
    ScaledRegularizer,
    batch_logprobs,
    micro_batches,
    policy_update,
    post_update_logprobs,
    split_rows,
)


def settings(budget: int = 10_000, *, shared_prefix: bool = True, chunk_size: int = 7) -> ForwardSettings:
    return ForwardSettings(temperature=1.0, chunk_size=chunk_size, pad_id=0, shared_prefix=shared_prefix,
                           micro_batch_tokens=budget, gen_budget=T)


def test_split_rows_keeps_groups_together():
    parts = split_rows(tiny_batch(), 2)
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    parts = split_rows(tiny_batch(), 4)  # more chunks than prompts: split rows
    assert [p.tolist() for p in parts] == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_micro_batches_respect_the_token_budget():
    batch = tiny_batch()
    # group 0: prompt 4 + completions 6,3,1,5 = 19 shared; group 1: prompt 3 + 2,6,4,3 = 18
    assert [m.tolist() for m in micro_batches(torch.arange(8), batch, 19, shared_prefix=True)] == [
        [0, 1, 2, 3], [4, 5, 6, 7]]
    # without sharing each row pays its prompt: costs 10, 7, 5, 9, 5, 9, 7, 6; greedy packing
    # under 19: 10+7=17 | 5+9+5=19 | 9+7=16 | 6
    assert [m.tolist() for m in micro_batches(torch.arange(8), batch, 19, shared_prefix=False)] == [
        [0, 1], [2, 3, 4], [5, 6], [7]]


@pytest.mark.parametrize("agg_mode", ["token_mean", "seq_mean_token_mean"])
@pytest.mark.parametrize("shared_prefix", [True, False])
def test_micro_batch_split_does_not_change_the_update(agg_mode, shared_prefix):
    """One SGD step from a whole-batch forward == the same step from tiny micro-batches."""
    batch = tiny_batch()
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 0.0, 1.0])
    loss = build_loss("grpo", agg_mode=agg_mode)
    deltas = []
    for budget in (10_000, 8):  # one micro-batch vs one row (or less) per micro-batch
        model = tiny_llama()
        before = copy.deepcopy(model.state_dict())
        fs = settings(budget, shared_prefix=shared_prefix)
        policy_update(sgd_policy(model), loss, batch, adv, old_logprobs=None, fs=fs, num_iterations=1, mini_batches=1)
        deltas.append({k: model.state_dict()[k] - before[k] for k in before})
    for name in deltas[0]:
        torch.testing.assert_close(deltas[0][name], deltas[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_update_raises_positive_advantage_rows():
    batch = tiny_batch()
    model = tiny_llama()
    fs = settings(64, chunk_size=64)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
    policy = sgd_policy(model)
    for g in policy.optimizer.param_groups:
        g["lr"] = 0.05
    before, _ = batch_logprobs(model, batch, fs, policy.autocast)
    policy_update(policy, build_loss("grpo"), batch, adv, old_logprobs=None, fs=fs, num_iterations=1, mini_batches=1)
    after, _ = batch_logprobs(model, batch, fs, policy.autocast)
    mask = batch.completion_mask
    delta = ((after - before) * mask).sum(1) / mask.sum(1)  # [N] mean logprob change per row
    assert (delta[adv > 0] > 0).all() and (delta[adv < 0] < 0).all(), delta


def test_non_finite_loss_is_skipped_and_counted(caplog):
    batch = tiny_batch()
    model = tiny_llama()
    before = copy.deepcopy(model.state_dict())
    fs = settings(chunk_size=64)
    adv = torch.full((8,), float("nan"))
    result = policy_update(sgd_policy(model), build_loss("grpo"), batch, adv, old_logprobs=None, fs=fs,
                           num_iterations=1, mini_batches=1)
    assert result.nonfinite_skips == 1
    assert "non-finite policy loss" in caplog.text and "optimizer step is discarded" in caplog.text
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # no NaN reached the weights


@pytest.mark.parametrize("shared_prefix", [True, False])
def test_post_update_logprobs_skips_zero_advantage_groups_exactly(shared_prefix):
    """Only the group with non-zero advantages is re-run; the displacement metrics equal
    those from re-running every row, and the skipped group keeps its `before` values."""
    from rlkit.diagnostics.metrics import logp_delta_metrics
    batch, model = tiny_batch(), tiny_llama()
    fs = settings(shared_prefix=shared_prefix)
    full, _ = batch_logprobs(model, batch, fs, lambda: torch.autocast("cpu", enabled=False))
    before = full + 0.1 * torch.randn(full.shape, generator=torch.Generator().manual_seed(1)) * batch.completion_mask
    adv = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, -1.0, 0.5, -0.5])  # group 0 saturated
    sub = post_update_logprobs(sgd_policy(model), batch, adv, before, fs)
    assert torch.equal(sub[:4], before[:4])  # group 0 never ran through the model
    torch.testing.assert_close(sub[4:] * batch.completion_mask[4:], full[4:] * batch.completion_mask[4:])
    want = logp_delta_metrics(before, full, adv, batch.completion_mask)
    got = logp_delta_metrics(before, sub, adv, batch.completion_mask)
    for key in want:
        assert float(got[key]) == pytest.approx(float(want[key]), abs=1e-6)
    # nothing to re-run when every group is saturated
    assert torch.equal(post_update_logprobs(sgd_policy(model), batch, torch.zeros(8), before, fs), before)


def test_regularizer_terms_are_added_with_their_coefficient():
    """policy_update adds coef x term to each micro-batch loss: with old logprobs 0.5 above the
    current ones every preserved token is displaced, so LLDS is positive, and the logged loss
    grows by exactly 0.2 x the logged penalty (one micro-batch, so both the loss's row share and
    LLDS's token share are 1; measured before any update)."""
    from rlkit.algorithms.regularizers import LLDS

    batch = tiny_batch()
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 0.0, 1.0])
    fs = settings()
    current, _ = batch_logprobs(tiny_llama(), batch, fs, lambda: torch.autocast("cpu", enabled=False))
    old = (current + 0.5) * batch.completion_mask
    runs = []
    for regs in ((), (ScaledRegularizer(0.2, LLDS(gate="response")),)):
        res = policy_update(sgd_policy(tiny_llama()), build_loss("grpo"), batch, adv, old_logprobs=old, fs=fs,
                            num_iterations=1, mini_batches=1, regularizers=regs)
        runs.append(res.metrics)
    plain, reg = runs
    assert reg["reg/llds/penalty"] > 0.1 and "reg/llds/penalty" not in plain
    gain = float(reg["train/loss"] - plain["train/loss"])
    assert gain == pytest.approx(0.2 * float(reg["reg/llds/penalty"]), rel=1e-5)


# ----------------------------------------------------------------------------- split invariance

ADV = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 0.0, 1.0])


def _update_delta(loss, budget: int, *, ref: bool, old: torch.Tensor | None,
                  features=None) -> dict[str, torch.Tensor]:
    """Parameter change of one SGD step (lr 1) on `tiny_batch` with micro-batches of `budget` tokens."""
    model = tiny_llama()
    before = copy.deepcopy(model.state_dict())
    ref_model = None
    if ref:
        torch.manual_seed(1)
        ref_model = tiny_llama()
        for p in ref_model.parameters():  # a reference that differs from the policy: KL != 0
            p.data.add_(0.02 * torch.randn_like(p))
        ref_model.requires_grad_(False)
    policy_update(sgd_policy(model), loss, tiny_batch(), ADV, old_logprobs=old, ref_model=ref_model,
                  fs=settings(budget), num_iterations=1, mini_batches=1, features=features)
    return {k: model.state_dict()[k] - before[k] for k in before}


def _old_logprobs() -> torch.Tensor:
    """Trainer logprobs of `tiny_batch`, shifted per token so ratios differ from 1 (clipping acts)."""
    cur, _ = batch_logprobs(tiny_llama(), tiny_batch(), settings(), lambda: torch.autocast("cpu", enabled=False))
    shift = 0.3 * torch.randn(cur.shape, generator=torch.Generator().manual_seed(2))
    return (cur + shift) * tiny_batch().completion_mask


def _assert_same(a: dict, b: dict, what: str) -> None:
    norm = torch.sqrt(sum((v.float() ** 2).sum() for v in a.values()))
    assert norm > 1e-4, f"{what}: the update is ~0, the comparison would prove nothing"
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-6, msg=f"{what}: {name}")


@pytest.mark.parametrize("agg_mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum",
                                      "seq_mean_token_sum_norm"])
@pytest.mark.parametrize("name", ["grpo", "dapo", "dr_grpo", "gspo", "cispo", "reinforce", "hapo"])
def test_every_loss_and_aggregation_is_split_invariant_with_kl_and_entropy(name, agg_mode):
    """The update of one rollout batch is the same from one micro-batch and from micro-batches
    of one row or less (budget 8 tokens), with the KL-to-reference and entropy terms on.

    seq_mean_token_sum_norm used to divide each micro-batch by its own padded length (94% of
    the update's norm differed); it now divides by the generation budget (`gen_budget`).
    HAPO takes its entropy scores from the whole batch (entropy_stats: batch, the default),
    computed once and sliced per micro-batch, which is what keeps it split-invariant."""
    from rlkit.algorithms.losses import AGG_MODES, available_losses
    from rlkit.algorithms.token_weights import TokenFeatures

    assert set(available_losses()) == {"grpo", "dapo", "dr_grpo", "gspo", "cispo", "reinforce", "hapo"}, \
        "a loss was registered: add it to this test's matrix"
    assert agg_mode in AGG_MODES
    loss = build_loss(name, agg_mode=agg_mode, kl_coef=0.1, kl_kind="k3", entropy_coef=0.01)
    assert loss.needs_ref_model and loss.needs_entropy_grad
    old = _old_logprobs()
    features = None
    if loss.needs_entropy_score:
        score = torch.linspace(-1, 1, tiny_batch().completion_mask.numel()).view_as(old)
        features = TokenFeatures(entropy_score=score * tiny_batch().completion_mask)
    whole = _update_delta(loss, 10_000, ref=True, old=old, features=features)
    split = _update_delta(loss, 8, ref=True, old=old, features=features)
    _assert_same(whole, split, f"{name}/{agg_mode}")


class TokenSumLoss(PolicyLoss):
    """A user loss with its own whole-batch reduction (overrides __call__): -sum(A log p) / tokens."""

    accumulate = "tokens"

    def __call__(self, inputs: LossInputs) -> LossOutput:
        adv = inputs.advantages[:, None].expand_as(inputs.logprobs)
        total = torch.where(inputs.mask, -adv * inputs.logprobs, 0.0).sum()
        return LossOutput(loss=total / inputs.mask.sum().clamp(min=1))


def test_user_loss_overriding_call_gets_the_accumulation_it_declares():
    """Token weighting declared -> the same update under any split. The same loss declaring row
    weighting is weighted by rows, which for a token mean is wrong: the update changes (so the
    trainer really reads the declaration instead of probing agg_mode)."""
    whole = _update_delta(TokenSumLoss(), 10_000, ref=False, old=None)
    _assert_same(whole, _update_delta(TokenSumLoss(), 8, ref=False, old=None), "tokens")
    _assert_same(whole, _update_delta(TokenSumLoss(), 12, ref=False, old=None), "tokens, budget 12")

    class RowsDeclared(TokenSumLoss):
        accumulate = "rows"

    wrong = _update_delta(RowsDeclared(), 8, ref=False, old=None)
    diff = max(float((wrong[k] - whole[k]).abs().max()) for k in whole)
    assert diff > 1e-4


def test_a_loss_that_needs_a_reference_model_refuses_to_run_without_one():
    with pytest.raises(ValueError, match="needs_ref_model"):
        policy_update(sgd_policy(tiny_llama()), build_loss("grpo", kl_coef=0.1), tiny_batch(), ADV,
                      old_logprobs=None, fs=settings(), num_iterations=1, mini_batches=1)


def test_declarations_follow_the_parameters():
    plain = build_loss("grpo")
    assert not plain.needs_ref_model and not plain.needs_entropy_grad and plain.accumulate == "rows"
    assert build_loss("dapo").accumulate == "tokens"  # token_mean
    assert build_loss("dr_grpo").accumulate == "rows"  # seq_mean_token_sum_norm
    assert build_loss("grpo", kl_coef=0.04).needs_ref_model
    assert build_loss("grpo", entropy_coef=-0.1).needs_entropy_grad
