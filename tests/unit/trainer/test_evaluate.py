"""Held-out evaluation (rlkit/trainer/collect.py): greedy accuracy and the unbiased pass@k.

`pass_at_k` is checked by hand and against brute force over every k-subset. `evaluate` runs the
real transformers engine on the tiny model; the reward ignores the text and scores each row
from its problem's `answer` ("1100#3": the group's first two samples correct), so the expected
accuracy and pass@k are known by construction.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch

from rlkit.data import Problem
from rlkit.rollout.hf_engine import HFEngine
from rlkit.rollout.types import SamplingConfig
from rlkit.trainer import collect
from rlkit.trainer.collect import RewardFunction, evaluate, pass_at_k

# ----------------------------------------------------------------------------- pass_at_k


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (4, 1, 2, 0.5),         # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (5, 2, 2, 0.7),         # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (10, 3, 1, 0.3),        # pass@1 = c/n
        (6, 1, 3, 0.5),         # 1 - C(5,3)/C(6,3) = 1 - 10/20
        (4, 3, 2, 1.0),         # n - c = 1 < k: every pair holds a correct sample
        (4, 4, 4, 1.0),
        (8, 0, 3, 0.0),         # nothing correct
        (3, 1, 3, 1.0),         # k = n: any correct sample counts
    ],
)
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_pass_at_k_equals_brute_force_over_subsets(n):
    for c in range(n + 1):
        correct = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(correct, k))
            brute = sum(any(s) for s in subsets) / len(subsets)
            assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)


def test_pass_at_k_is_finite_where_binomials_overflow():
    # C(2000, 1000) ~ 1e600 overflows a float; the product form does not build it.
    assert pass_at_k(2000, 1, 1000) == pytest.approx(0.5)  # 1 - C(1999,1000)/C(2000,1000) = 1 - 1000/2000
    assert 0.0 < pass_at_k(2000, 3, 10) < 1.0


@pytest.mark.parametrize(("n", "c", "k"), [(4, 5, 1), (4, -1, 1), (4, 1, 0), (4, 1, 5)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError, match="1 <= k <= n and 0 <= c <= n"):
        pass_at_k(n, c, k)


# ----------------------------------------------------------------------------- evaluate

K = 4
PATTERNS = ["1000", "1100", "0000", "1111", "0110"]  # c = 1, 2, 0, 4, 2; first sample 1, 1, 0, 1, 0


def by_pattern(prompts, completions, answer, **_):
    """Row j of a problem's rows scores pattern[j]. Answers are unique per problem, so a
    problem's rows are the run of equal answers (one row greedy, K rows sampled)."""
    out, pos = [], 0
    for i, a in enumerate(answer):
        pos = pos + 1 if i and answer[i - 1] == a else 0
        out.append(float(a.split("#")[0][pos]))
    return out


def _problems():
    return [Problem(prompt=f"What is {i} + 1?", answer=f"{p}#{i}") for i, p in enumerate(PATTERNS)]


@pytest.fixture(scope="module")
def engine(tiny_model_path):
    eng = HFEngine(tiny_model_path, dtype="float32", seed=0)
    yield eng
    eng.close()


def _evaluate(engine, problems, samples, accelerator=None, reward=by_pattern):
    return evaluate(engine, problems, RewardFunction("by_pattern", reward), max_new_tokens=3, seed=0,
                    samples=samples, temperature=1.0, accelerator=accelerator)


def test_greedy_only_by_default(engine):
    got = _evaluate(engine, _problems(), samples=0)
    assert set(got) == {"eval/accuracy", "eval/completion_len"}
    assert got["eval/accuracy"] == pytest.approx(3 / 5)  # greedy row = pattern[0]: 1, 1, 0, 1, 0


def test_sampled_pass_at_k(engine):
    got = _evaluate(engine, _problems(), samples=K)
    assert got["eval/accuracy"] == pytest.approx(3 / 5)  # unchanged by sampling
    # pass@1 = mean c/n = (1 + 2 + 0 + 4 + 2) / (4 * 5) = 9/20
    assert got["eval/pass@1"] == pytest.approx(9 / 20)
    # pass@4 with n = 4: 1 wherever c > 0 -> 4 of 5 problems
    assert got[f"eval/pass@{K}"] == pytest.approx(4 / 5)


def test_one_sample_logs_pass_at_1_once(engine):
    got = _evaluate(engine, _problems(), samples=1)
    assert sorted(k for k in got if "pass@" in k) == ["eval/pass@1"]
    assert got["eval/pass@1"] == pytest.approx(3 / 5)  # the one sample scores pattern[0]


def test_sampled_completions_are_seeded(engine):
    """Evaluation draws the same samples wherever in a run it happens (resume included)."""
    seen: list[list[str]] = []

    def record(prompts, completions, answer, **kw):
        seen.append(list(completions))
        return by_pattern(prompts, completions, answer, **kw)

    _evaluate(engine, _problems(), samples=K, reward=record)
    torch.manual_seed(1234)  # whatever the RNG state before
    engine.generate(["noise"], 3, SamplingConfig(max_new_tokens=5))
    _evaluate(engine, _problems(), samples=K, reward=record)
    greedy1, sampled1, greedy2, sampled2 = seen
    assert len(sampled1) == K * len(PATTERNS)
    assert (greedy1, sampled1) == (greedy2, sampled2)
    assert len(set(sampled1)) > 1  # really sampled (the tiny model is random: T = 1 varies its text)


def test_ranks_combine_per_problem_means_weighted_by_problem_count(engine, monkeypatch):
    """Two ranks hold 3 and 2 of the 5 problems; their means, weighted by problem count, are
    the single-process result. `mean_across_ranks` is replaced by a recorder of (metrics, weight)."""
    whole = _evaluate(engine, _problems(), samples=K)
    parts = []
    monkeypatch.setattr(collect, "mean_across_ranks", lambda acc, m, weight: parts.append((m, weight)) or m)
    for rank in (0, 1):
        _evaluate(engine, _problems(), samples=K, accelerator=SimpleNamespace(process_index=rank, num_processes=2))
    assert [w for _, w in parts] == [3, 2]  # rank 0: problems 0, 2, 4; rank 1: problems 1, 3
    # rank 0: c = 1, 0, 2 -> pass@1 (1 + 0 + 2) / 12 = 1/4, pass@4 2/3
    assert parts[0][0]["eval/pass@1"] == pytest.approx(1 / 4)
    assert parts[0][0][f"eval/pass@{K}"] == pytest.approx(2 / 3)
    # rank 1: c = 2, 4 -> pass@1 6/8, pass@4 1
    assert parts[1][0]["eval/pass@1"] == pytest.approx(3 / 4)
    for key in ("eval/accuracy", "eval/pass@1", f"eval/pass@{K}"):
        combined = sum(m[key] * w for m, w in parts) / sum(w for _, w in parts)
        assert combined == pytest.approx(whole[key]), key
