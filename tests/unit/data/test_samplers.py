"""Prompt samplers: the uniform one behind the common calling convention, and VADE's posterior
updates, two-scale decay, Thompson draws, top-k selection and exact resume, all by hand."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch

from rlkit.config import ConfigError, load_config
from rlkit.data import SAMPLERS, PromptSampler, UniformSampler, VADESampler, build_sampler
from rlkit.registry import ParamError

REPO = Path(__file__).resolve().parents[3]
CPU_RECIPE = REPO / "recipes" / "configs" / "grpo_math_cpu.yaml"

F64 = torch.float64


def _posterior(s: VADESampler, step: int) -> tuple[list[float], list[float]]:
    a, b = s.posterior(step)
    return a.tolist(), b.tolist()


# ----------------------------------------------------------------------------- registry, uniform


def test_registry_holds_uniform_and_vade():
    assert SAMPLERS.names() == ["uniform", "vade"]
    assert SAMPLERS.get("uniform") is UniformSampler and SAMPLERS.get("vade") is VADESampler
    assert not UniformSampler.distinct_per_step and VADESampler.distinct_per_step
    s = build_sampler("vade", {"global_decay": 0.9}, num_items=5, seed=1)
    assert isinstance(s, VADESampler) and s.global_decay == 0.9 and s.num_items == 5 and s.seed == 1


@pytest.mark.parametrize(("name", "params", "fragment"), [
    ("vade", {"global_decy": 0.9}, "data.sampler.params.global_decy: unknown parameter of sampler 'vade' "
                                    "(VADESampler); did you mean 'global_decay'?"),
    ("vade", {"seed": 3}, "data.sampler.params.seed: unknown parameter"),  # seed comes from data.seed
    ("uniform", {"sample_decay": 0.9}, "Accepted: (none)"),
])
def test_build_sampler_checks_params(name, params, fragment):
    with pytest.raises(ParamError, match=re.escape(fragment)):
        build_sampler(name, params, num_items=5, seed=0)


def test_uniform_sampler_is_prompt_sampler():
    # Same draws, same state format (older checkpoints load), step ignored, update a no-op.
    ref, s = PromptSampler(7, seed=3), UniformSampler(7, seed=3)
    for step in range(1, 5):
        assert s.next_indices(3, step) == ref.next_indices(3)
        s.update([0, 1], [1, 2], [2, 2], step)
    assert s.state_dict() == ref.state_dict()
    resumed = UniformSampler(7, seed=3)
    resumed.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert resumed.next_indices(5, 9) == ref.next_indices(5)


# ----------------------------------------------------------------------------- posterior updates


def test_posterior_update_by_hand():
    # No decay (λ = 1): pure counting from the prior (1, 1).
    s = VADESampler(4, seed=0, global_decay=1, sample_decay=1)
    s.update([0, 2, 0], successes=[3, 1, 2], trials=[4, 4, 8], step=1)
    a, b = _posterior(s, 1)
    # problem 0 listed twice, both count: a = 1 + 3 + 2 = 6, b = 1 + (4 - 3) + (8 - 2) = 8
    # problem 2: a = 1 + 1 = 2, b = 1 + (4 - 1) = 4;   problems 1, 3: the prior (1, 1)
    assert a == [6.0, 1.0, 2.0, 1.0]
    assert b == [8.0, 1.0, 4.0, 1.0]
    s.update(torch.tensor([3]), torch.tensor([0.5]), torch.tensor([2.0]), step=2)  # fractional counts
    a, b = _posterior(s, 2)
    # problem 3: a = 1 + 0.5 = 1.5, b = 1 + (2 - 0.5) = 2.5
    assert (a[3], b[3]) == (1.5, 2.5) and (a[0], b[0]) == (6.0, 8.0)


def test_prior_is_a_param():
    s = VADESampler(2, seed=0, prior_alpha=2.0, prior_beta=0.5, global_decay=1, sample_decay=1)
    assert _posterior(s, 0) == ([2.0, 2.0], [0.5, 0.5])
    s.update([1], [3], [4], step=1)
    assert _posterior(s, 1) == ([2.0, 5.0], [0.5, 1.5])  # a = 2 + 3, b = 0.5 + 1


# ----------------------------------------------------------------------------- decay


def test_global_and_sample_decay_by_hand():
    # λ_g = λ_s = 0.5, prior (1, 1): powers of two, so every value below is exact.
    s = VADESampler(3, seed=0, global_decay=0.5, sample_decay=0.5)
    s.update([0], [4], [4], step=1)
    # step 1: excess was 0, so no decay acts: a0 = 1 + 4 = 5, b0 = 1 + 0 = 1; s_0 = 1
    assert _posterior(s, 1) == ([5.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    # read at step 2: global decay once, a0 = 1 + 0.5 * 4 = 3
    # read at step 3: global decay twice, a0 = 1 + 0.25 * 4 = 2 (untouched problems stay (1, 1))
    assert _posterior(s, 2) == ([3.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    assert _posterior(s, 3) == ([2.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    s.update([0], [0], [2], step=3)
    # update at step 3, Δt = 3 - 1 = 2: keep (λ_g λ_s)^2 = 0.25^2 = 0.0625 of the excess, then add
    # a0 = 1 + 0.0625 * 4 + 0 = 1.25;  b0 = 1 + 0.0625 * 0 + 2 = 3;  s_0 = 3
    assert _posterior(s, 3) == ([1.25, 1.0, 1.0], [3.0, 1.0, 1.0])
    # read at step 4: a0 = 1 + 0.5 * 0.25 = 1.125;  b0 = 1 + 0.5 * 2 = 2
    assert _posterior(s, 4) == ([1.125, 1.0, 1.0], [2.0, 1.0, 1.0])


def test_decay_goes_to_the_prior_not_to_zero():
    # prior (2, 0.5), λ_g = 0.5, λ_s = 1 (per-problem decay off)
    s = VADESampler(1, seed=0, prior_alpha=2.0, prior_beta=0.5, global_decay=0.5, sample_decay=1.0)
    s.update([0], [2], [4], step=2)  # a = 2 + 2 = 4, b = 0.5 + 2 = 2.5
    # read at step 4: a = 2 + 0.25 * (4 - 2) = 2.5;  b = 0.5 + 0.25 * (2.5 - 0.5) = 1.0
    assert _posterior(s, 4) == ([2.5], [1.0])
    s.update([0], [1], [1], step=4)
    # Δt = 2, keep (0.5 * 1)^2 = 0.25: a = 2 + 0.25 * 2 + 1 = 3.5;  b = 0.5 + 0.25 * 2 + 0 = 1.0
    assert _posterior(s, 4) == ([3.5], [1.0])
    assert _posterior(s, 1000)[0][0] == pytest.approx(2.0) and _posterior(s, 1000)[1][0] == pytest.approx(0.5)


def test_problem_listed_twice_decays_once():
    s = VADESampler(1, seed=0, global_decay=0.5, sample_decay=0.5)
    s.update([0], [2], [2], step=1)  # (3, 1)
    s.update([0, 0], [1, 2], [2, 2], step=2)
    # Δt = 1, keep 0.25 once: a = 1 + 0.25 * 2 + 1 + 2 = 4.5;  b = 1 + 0 + (2 - 1) + (2 - 2) = 2
    assert _posterior(s, 2) == ([4.5], [2.0])


def test_lazy_decay_matches_a_stepwise_reference():
    # The reference applies λ_g to every problem's excess at each step boundary, and λ_s^Δt to a
    # problem's excess when it is updated (once per update call), then adds the counts.
    lg, ls, a0, b0, n_items = 0.9, 0.7, 1.5, 0.5, 6
    rng = random.Random(0)
    s = VADESampler(n_items, seed=0, prior_alpha=a0, prior_beta=b0, global_decay=lg, sample_decay=ls)
    ea, eb, last = [0.0] * n_items, [0.0] * n_items, [0] * n_items
    for t in range(1, 30):
        ea, eb = [x * lg for x in ea], [x * lg for x in eb]
        idx = [rng.randrange(n_items) for _ in range(rng.randrange(4))]
        trials = [rng.randint(1, 8) for _ in idx]
        wins = [rng.randint(0, n) for n in trials]
        for i in set(idx):
            ea[i], eb[i] = ea[i] * ls ** (t - last[i]), eb[i] * ls ** (t - last[i])
            last[i] = t
        for i, k, n in zip(idx, wins, trials, strict=True):
            ea[i], eb[i] = ea[i] + k, eb[i] + n - k
        s.update(idx, wins, trials, step=t)
        a, b = s.posterior(t)
        assert torch.allclose(a, torch.tensor([a0 + x for x in ea], dtype=F64), rtol=1e-12, atol=0)
        assert torch.allclose(b, torch.tensor([b0 + x for x in eb], dtype=F64), rtol=1e-12, atol=0)


def test_steps_must_not_go_backwards():
    s = VADESampler(3, seed=0)
    s.update([1], [1], [2], step=5)
    with pytest.raises(ValueError, match="step 4 is before the last update"):
        s.next_indices(1, step=4)
    with pytest.raises(ValueError, match="backwards"):
        s.update([0], [1], [2], step=3)


# ----------------------------------------------------------------------------- Thompson draws, top-k


def _with_history(seed: int) -> VADESampler:
    s = VADESampler(50, seed=seed)
    s.update(list(range(0, 50, 3)), [2] * 17, [8] * 17, step=1)
    s.update(list(range(1, 50, 4)), [7] * 13, [8] * 13, step=2)
    return s


def test_thompson_draws_depend_on_seed_and_step_alone():
    s = _with_history(seed=4)
    first = s.thompson_draws(3)
    s.next_indices(5, 3)  # other calls between draws change nothing: the generator is reseeded
    s.thompson_draws(7)
    assert torch.equal(s.thompson_draws(3), first)
    assert torch.equal(_with_history(seed=4).thompson_draws(3), first)  # another rank, same history
    assert not torch.equal(s.thompson_draws(4), first)  # next step: new draws
    assert not torch.equal(_with_history(seed=5).thompson_draws(3), first)  # another seed
    assert _with_history(seed=4).next_indices(8, 3) == _with_history(seed=4).next_indices(8, 3)
    assert _with_history(seed=4).next_indices(8, 3) != _with_history(seed=4).next_indices(8, 4)


def test_thompson_draws_follow_the_posterior():
    # 4000 problems at Beta(3, 1): mean 3/4, sd sqrt(3 / (16 * 5)) ≈ 0.19, so the sample mean is
    # 0.75 ± 0.003 (sd); the draw is the success rate p, not 1 - p.
    s = VADESampler(4000, seed=0, global_decay=1, sample_decay=1)
    s.update(list(range(4000)), [2] * 4000, [2] * 4000, step=1)
    p = s.thompson_draws(1)
    assert p.dtype == F64 and bool(((p >= 0) & (p <= 1)).all())
    assert p.mean().item() == pytest.approx(0.75, abs=0.015)


def test_top_k_is_the_k_highest_variance_scores_ties_by_index():
    s = _with_history(seed=0)
    p = s.thompson_draws(6)
    score = (p * (1 - p)).tolist()
    expected = sorted(range(50), key=lambda i: (-score[i], i))[:7]
    assert s.next_indices(7, 6) == expected
    tied = VADESampler(5, seed=0)
    tied.thompson_draws = lambda step: torch.full((5,), 0.3, dtype=F64)  # every score equal
    assert tied.next_indices(3, 1) == [0, 1, 2]


def test_posterior_near_half_is_preferred():
    # Beta(2, 8) (mean 0.2), Beta(10, 10) (mean 0.5), Beta(8, 2) (mean 0.8): the middle one's
    # draws score p(1 - p) ≈ 0.24; the others' reach that only when p lands near 0.5. Measured:
    # chosen for 87% of 2000 seeds; over 300 seeds the sd is ≈ 0.02, so 0.75 leaves 6 sd.
    wins = 0
    for seed in range(300):
        s = VADESampler(3, seed=seed, global_decay=1, sample_decay=1)
        s.update([0, 1, 2], [1, 9, 7], [8, 18, 8], step=1)  # a = 1 + k, b = 1 + n - k
        assert _posterior(s, 1) == ([2.0, 10.0, 8.0], [8.0, 10.0, 2.0])
        wins += s.next_indices(1, step=1) == [1]
    assert wins / 300 > 0.75


def test_repeated_draws_in_one_step_continue_down_the_ranking():
    # Dynamic sampling draws again within a step: new problems first, then start over.
    s = VADESampler(5, seed=2)
    first, second = s.next_indices(2, 1), s.next_indices(2, 1)
    assert not set(first) & set(second)
    assert s.next_indices(2, 1) == first  # one problem left < 2: the exclusion starts over
    assert s.next_indices(2, 2) == VADESampler(5, seed=2).next_indices(2, 2)  # a new step starts fresh


def test_bad_draw_and_update_arguments():
    s = VADESampler(4, seed=0)
    with pytest.raises(ValueError, match=r"^k: .*num_items = 4\], got 5"):
        s.next_indices(5, 1)
    with pytest.raises(ValueError, match="^k: "):
        s.next_indices(0, 1)
    with pytest.raises(ValueError, match="^successes: "):
        s.update([0], [3], [2], step=1)
    with pytest.raises(ValueError, match="^indices: "):
        s.update([4], [1], [2], step=1)
    with pytest.raises(ValueError, match="^indices, successes, trials: "):
        s.update([0, 1], [1], [2, 2], step=1)


# ----------------------------------------------------------------------------- params


@pytest.mark.parametrize(("param", "value"), [
    ("global_decay", 0.0), ("global_decay", 1.5), ("global_decay", -0.1), ("global_decay", float("nan")),
    ("global_decay", "0.9"), ("sample_decay", 0), ("sample_decay", 1.01),
    ("prior_alpha", 0.0), ("prior_alpha", -1.0), ("prior_alpha", float("inf")), ("prior_beta", 0),
])
def test_bad_params_are_refused_by_name(param, value):
    with pytest.raises(ValueError, match=f"^{param}: "):
        VADESampler(5, seed=0, **{param: value})


def test_decay_one_is_allowed_and_needs_an_item():
    VADESampler(1, seed=0, global_decay=1, sample_decay=1.0)
    with pytest.raises(ValueError, match="^num_items: "):
        VADESampler(0, seed=0)


# ----------------------------------------------------------------------------- state


def test_state_round_trip_is_exact():
    original = VADESampler(9, seed=7, prior_alpha=1.5, global_decay=0.97, sample_decay=0.8)
    rng = random.Random(1)
    for t in range(1, 4):
        idx = original.next_indices(3, t)
        original.update(idx, [rng.randint(0, 4) for _ in idx], [4] * 3, step=t)
    original.next_indices(3, 4)  # mid-step: a second draw at step 4 must continue the ranking
    state = json.loads(json.dumps(original.state_dict()))  # survives a JSON checkpoint
    restored = VADESampler(9, seed=7, prior_alpha=1.5, global_decay=0.97, sample_decay=0.8)
    restored.load_state_dict(state)
    assert restored.state_dict() == original.state_dict()
    for t in range(4, 9):
        idx = original.next_indices(3, t)
        assert restored.next_indices(3, t) == idx
        wins = [rng.randint(0, 4) for _ in idx]
        original.update(idx, wins, [4] * 3, step=t)
        restored.update(idx, wins, [4] * 3, step=t)
        assert torch.equal(restored.alpha, original.alpha) and torch.equal(restored.beta, original.beta)
        assert torch.equal(restored.thompson_draws(t + 1), original.thompson_draws(t + 1))


@pytest.mark.parametrize(("num_items", "seed"), [(8, 7), (9, 1)])
def test_state_of_another_data_config_is_refused(num_items, seed):
    state = VADESampler(9, seed=7).state_dict()
    with pytest.raises(ValueError, match="the data config changed since the checkpoint"):
        VADESampler(num_items, seed=seed).load_state_dict(state)


def test_state_of_another_sampler_or_prior_is_refused():
    with pytest.raises(ValueError, match="'uniform' sampler's.*data.sampler changed"):
        VADESampler(9, seed=7).load_state_dict(UniformSampler(9, seed=7).state_dict())
    with pytest.raises(ValueError, match="'vade' sampler's.*data.sampler changed"):
        UniformSampler(9, seed=7).load_state_dict(VADESampler(9, seed=7).state_dict())
    with pytest.raises(ValueError, match="prior_alpha / prior_beta changed"):
        VADESampler(9, seed=7, prior_beta=2.0).load_state_dict(VADESampler(9, seed=7).state_dict())


# ----------------------------------------------------------------------------- config


def _config_error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(CPU_RECIPE, list(overrides))
    return str(info.value)


def test_config_default_and_vade():
    assert load_config(CPU_RECIPE).data.sampler.name == "uniform"
    cfg = load_config(CPU_RECIPE, ["data.sampler.name=vade", "data.sampler.params.global_decay=0.9"])
    assert cfg.data.sampler.name == "vade" and cfg.data.sampler.params == {"global_decay": 0.9}
    # uniform wraps epochs, so it runs on fewer problems than prompts per step
    assert load_config(CPU_RECIPE, ["data.num_train=4"]).data.num_train == 4


@pytest.mark.parametrize(("overrides", "fragment"), [
    (["data.sampler.name=vade", "data.sampler.params.global_decay=1.5"],
     "config error at data.sampler.params.global_decay: must be a number in (0, 1]"),
    (["data.sampler.name=vade", "data.sampler.params.sample_decay=0"],
     "config error at data.sampler.params.sample_decay: must be a number in (0, 1] (1 = no decay), got 0"),
    (["data.sampler.name=vade", "data.sampler.params.prior_alpha=0"],
     "config error at data.sampler.params.prior_alpha: must be a finite number > 0"),
    (["data.sampler.name=vad"],
     "config error at data.sampler.name: unknown value 'vad'; did you mean 'vade'? Known samplers: uniform, vade."),
    (["data.sampler.name=vade", "data.sampler.params.global_decy=0.9"],
     "config error at data.sampler.params.global_decy: unknown parameter of sampler 'vade' (VADESampler); "
     "did you mean 'global_decay'?"),
    (["data.sampler.params.global_decay=0.9"],
     "config error at data.sampler.params.global_decay: unknown parameter of sampler 'uniform'"),
    (["data.sampler.name=vade", "data.num_train=4"],
     "config error: data.num_train (4) is smaller than rollout.prompts_per_step (8), and data.sampler 'vade'"),
])
def test_config_errors(overrides, fragment):
    assert fragment in _config_error(*overrides)
