"""diagnostics.metrics: hand-computed values on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from rlkit.diagnostics.metrics import (
    DiagInputs,
    entropy_metrics,
    logp_delta_metrics,
    masked_quantiles,
    mismatch_metrics,
    position_bucket_means,
    step_metrics,
    zero_adv_metrics,
)


def _val(t: torch.Tensor) -> float:
    assert t.dim() == 0
    return float(t)


def test_zero_adv_three_groups():
    # group 7: [1, 1] all-correct; group 3: [0, 0] all-wrong; group 5: [1, 0] mixed.
    # Ids are neither sorted nor contiguous on purpose.
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    gids = torch.tensor([7, 7, 3, 3, 5, 5])
    adv = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.7071, -0.7071])
    mask = torch.ones(6, 3, dtype=torch.bool)
    m = zero_adv_metrics(rewards, gids, adv, mask)
    assert _val(m["diag/zero_adv_frac"]) == pytest.approx(2 / 3)  # 2 of 3 groups
    assert _val(m["diag/zero_adv_all_correct_frac"]) == pytest.approx(1 / 3)
    assert _val(m["diag/zero_adv_all_wrong_frac"]) == pytest.approx(1 / 3)
    assert _val(m["diag/effective_batch_frac"]) == pytest.approx(2 / 6)  # rows 4 and 5


def test_zero_adv_shaped_reward_is_neither_correct_nor_wrong():
    # group 0: [0.5, 0.5] zero variance but neither 1 nor 0; group 1: [1.1, 1.1] counts as
    # all-correct (>= 1); group 2: [0.2, 0.9] mixed.
    rewards = torch.tensor([0.5, 0.5, 1.1, 1.1, 0.2, 0.9])
    gids = torch.tensor([0, 0, 1, 1, 2, 2])
    adv = torch.zeros(6)
    m = zero_adv_metrics(rewards, gids, adv, torch.ones(6, 2, dtype=torch.bool))
    assert _val(m["diag/zero_adv_frac"]) == pytest.approx(2 / 3)
    assert _val(m["diag/zero_adv_all_correct_frac"]) == pytest.approx(1 / 3)
    assert _val(m["diag/zero_adv_all_wrong_frac"]) == 0.0
    assert _val(m["diag/effective_batch_frac"]) == 0.0


def test_effective_batch_token_level_advantages_ignore_padding():
    # row 0: non-zero advantage only on a padded position -> inactive; row 1: active.
    adv = torch.tensor([[0.0, 0.0, 5.0], [0.0, 0.3, 0.0]])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    m = zero_adv_metrics(torch.tensor([0.0, 1.0]), torch.tensor([0, 0]), adv, mask)
    assert _val(m["diag/effective_batch_frac"]) == pytest.approx(0.5)


def test_entropy_percentiles():
    # counted values sorted: [1, 2, 3, 4, 5] (the 99s are padding)
    ent = torch.tensor([[1.0, 2.0, 3.0, 99.0], [4.0, 5.0, 99.0, 99.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    m = entropy_metrics(ent, mask)
    # the token mean (15 / 5 = 3) is the trainer's `policy/entropy`, not repeated under diag/
    assert not any(k.endswith("entropy_mean") for k in m)
    # linear interpolation at q·(M-1): p10 -> 0.4 -> 1 + 0.4·(2-1) = 1.4; p50 -> 2 -> 3;
    # p90 -> 3.6 -> 4 + 0.6·(5-4) = 4.6
    assert _val(m["diag/entropy_p10"]) == pytest.approx(1.4)
    assert _val(m["diag/entropy_p50"]) == pytest.approx(3.0)
    assert _val(m["diag/entropy_p90"]) == pytest.approx(4.6)


def test_masked_quantiles_match_torch_quantile():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(7, 11, generator=g)
    mask = torch.rand(7, 11, generator=g) > 0.3
    qs = (0.1, 0.25, 0.5, 0.9)
    ref = torch.quantile(x[mask], torch.tensor(qs))
    torch.testing.assert_close(masked_quantiles(x, mask, qs), ref)


def test_position_profile_relative_quarters():
    # row 0: 4 tokens [1, 2, 3, 4] -> one per quarter.
    # row 1: 2 tokens [10, _, 20] (middle masked out): ranks 0, 1 of L=2 -> buckets
    #        floor(0·4/2) = 0 and floor(1·4/2) = 2.
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 77.0, 20.0, 77.0]])
    mask = torch.tensor([[True, True, True, True], [True, False, True, False]])
    prof = position_bucket_means(x, mask)
    # buckets: (1 + 10) / 2, 2, (3 + 20) / 2, 4
    torch.testing.assert_close(prof, torch.tensor([5.5, 2.0, 11.5, 4.0]))
    m = entropy_metrics(x, mask)
    assert _val(m["diag/entropy_pos_0_25"]) == pytest.approx(5.5)
    assert _val(m["diag/entropy_pos_75_100"]) == pytest.approx(4.0)


def test_position_profile_empty_bucket_is_nan():
    # one row of 2 tokens fills buckets 0 and 2 only
    prof = position_bucket_means(torch.tensor([[1.0, 3.0]]), torch.tensor([[True, True]]))
    assert prof[0] == 1.0 and prof[2] == 3.0
    assert math.isnan(prof[1]) and math.isnan(prof[3])


def test_logp_deltas_by_advantage_sign():
    old = torch.zeros(4, 2)
    new = torch.tensor(
        [
            [0.1, 0.3],  # A = +1.0, both tokens count
            [-0.1, 9.0],  # A = +0.5, second token padded
            [-0.2, -0.4],  # A = -1.0
            [5.0, 5.0],  # A = 0: in neither set
        ]
    )
    adv = torch.tensor([1.0, 0.5, -1.0, 0.0])
    mask = torch.tensor([[True, True], [True, False], [True, True], [True, True]])
    m = logp_delta_metrics(old, new, adv, mask)
    assert _val(m["diag/logp_delta_pos"]) == pytest.approx(0.1)  # (0.1 + 0.3 - 0.1) / 3
    assert _val(m["diag/logp_delta_neg"]) == pytest.approx(-0.3)  # (-0.2 - 0.4) / 2


def test_logp_deltas_token_level_advantages_and_nan_when_empty():
    old = torch.zeros(1, 3)
    new = torch.tensor([[0.2, -0.4, 1.0]])
    adv = torch.tensor([[1.0, 1.0, 0.0]])  # two positive tokens, no negative one
    m = logp_delta_metrics(old, new, adv, torch.ones(1, 3, dtype=torch.bool))
    assert _val(m["diag/logp_delta_pos"]) == pytest.approx(-0.1)  # (0.2 - 0.4) / 2
    assert math.isnan(_val(m["diag/logp_delta_neg"]))


def test_mismatch_abs_and_k3():
    old = torch.tensor([[-1.0, -2.0, 0.0]])
    eng = torch.tensor([[-1.5, -2.0, -50.0]])  # last token is padding
    mask = torch.tensor([[True, True, False]])
    m = mismatch_metrics(old, eng, mask)
    assert _val(m["diag/mismatch_abs"]) == pytest.approx(0.25)  # (0.5 + 0) / 2
    # log r = old - engine = 0.5 and 0: k3 = e^0.5 - 1 - 0.5 = 0.148721, and 0 -> mean 0.0743606
    assert _val(m["diag/mismatch_kl"]) == pytest.approx((math.exp(0.5) - 1.5) / 2, rel=1e-5)


def test_step_metrics_keys_follow_inputs():
    n, t = 4, 3
    base = dict(
        rewards=torch.tensor([1.0, 0.0, 1.0, 1.0]),
        group_ids=torch.tensor([0, 0, 1, 1]),
        advantages=torch.tensor([0.7, -0.7, 0.0, 0.0]),
        mask=torch.ones(n, t, dtype=torch.bool),
    )
    m = step_metrics(DiagInputs(**base))
    assert set(m) == {
        "diag/zero_adv_frac",
        "diag/zero_adv_all_correct_frac",
        "diag/zero_adv_all_wrong_frac",
        "diag/effective_batch_frac",
    }
    full = step_metrics(
        DiagInputs(
            **base,
            entropy=torch.rand(n, t),
            old_logprobs=-torch.rand(n, t),
            new_logprobs=-torch.rand(n, t),
            engine_logprobs=-torch.rand(n, t),
        )
    )
    for key in (
        "diag/entropy_p10",
        "diag/entropy_p50",
        "diag/entropy_p90",
        "diag/entropy_pos_0_25",
        "diag/entropy_pos_25_50",
        "diag/entropy_pos_50_75",
        "diag/entropy_pos_75_100",
        "diag/logp_delta_pos",
        "diag/logp_delta_neg",
        "diag/mismatch_abs",
        "diag/mismatch_kl",
    ):
        assert key in full, key
    assert len(full) == 4 + 7 + 2 + 2  # zero-adv, entropy p*/pos_*, logp_delta, mismatch
    assert _val(full["diag/zero_adv_frac"]) == pytest.approx(0.5)  # group 1 = [1, 1]
    assert all(v.dim() == 0 and not v.requires_grad for v in full.values())


def _all_metrics() -> dict:
    """Every metric `step_metrics` can emit: all optional inputs given (2 rows x 4 tokens)."""
    n, t = 2, 4
    return step_metrics(
        DiagInputs(
            rewards=torch.tensor([1.0, 0.0]),
            group_ids=torch.tensor([0, 0]),
            advantages=torch.tensor([1.0, -1.0]),
            mask=torch.ones(n, t, dtype=torch.bool),
            entropy=torch.rand(n, t),
            old_logprobs=-torch.rand(n, t),
            new_logprobs=-torch.rand(n, t),
            engine_logprobs=-torch.rand(n, t),
        )
    )


def test_docs_cover_every_metric_key():
    from pathlib import Path

    doc = (Path(__file__).parents[3] / "docs" / "diagnostics.md").read_text()
    m = _all_metrics()
    for key in m:
        # the table names a key in full, or as a suffix after a full sibling (`_p50`, `_25_50`)
        parts = key.split("_")
        forms = [f"`{key}`"] + [f"`_{'_'.join(parts[i:])}`" for i in range(1, len(parts))]
        assert any(f in doc for f in forms), key


def test_no_key_duplicates_a_trainer_metric():
    # One key per quantity: the token-mean entropy is `policy/entropy`, completion length and
    # truncation are `rollout/completion_len_mean` / `rollout/truncated_frac` (trainer loop).
    m = _all_metrics()
    removed = {"diag/entropy_mean", "diag/completion_len_mean", "diag/truncated_frac"}
    assert removed.isdisjoint(m)
