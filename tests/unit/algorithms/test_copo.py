"""COPO (entropy-gated blend of GRPO and a batch-level advantage) against hand-computed values."""

import inspect
import math

import pytest
import torch

from rlkit.algorithms.advantages import copo, get_advantage, grpo

F64 = torch.float64


def t(x):
    return torch.tensor(x, dtype=F64)


def ids(x):
    return torch.tensor(x, dtype=torch.long)


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


# A hard prompt (group 0: one correct answer out of four distinct ones) next to an easier one
# (group 1: three correct, two answer clusters).
R = t([1, 0, 0, 0, 1, 1, 1, 0])
G = ids([0, 0, 0, 0, 1, 1, 1, 1])
ANSWERS = ids([0, 1, 2, 3, 0, 0, 0, 1])
# Hard prompt: H = ln 4 = 1.386294 < rho = 1.5
#   w = sigmoid(20 (ln 4 - 1.5)) = sigmoid(-2.274113) = 1 / (1 + 9.719292) = 0.093290
#   GRPO for its correct answer: (1 - 0.25) / std([1, 0, 0, 0]) = 0.75 / sqrt(0.75 / 3) = 1.5
W_HARD = sigmoid(20 * (math.log(4) - 1.5))
LOCAL = 0.75 / math.sqrt(0.75 / 3)


def test_registered_with_answers_and_default_form():
    fn = get_advantage("copo")
    assert fn is copo and fn.needs_answers is True and fn.needs_group is True
    kw = copo.__kwdefaults__
    assert (kw["gamma"], kw["rho"], kw["global_form"]) == (20.0, 1.5, "response")
    # `answers` is part of the calling convention, never a config param.
    from rlkit.algorithms.advantages import ADVANTAGES

    assert "answers" not in ADVANTAGES.signature(copo).accepted
    assert "answers" in inspect.signature(copo).parameters


def test_prompt_form_punishes_the_correct_answer_of_a_hard_prompt():
    # Per-prompt global term: accuracies R = [0.25, 0.75], mean 0.5,
    #   unbiased std = sqrt(2 * 0.25^2 / 1) = 0.353553 -> A_global(hard) = -0.25 / 0.353553 = -0.707107
    #   A = w 1.5 + (1 - w)(-0.707107) = 0.093290 * 1.5 - 0.906710 * 0.707107 = 0.139935 - 0.641141
    #     = -0.501206 < 0: the one correct answer is pushed down.
    adv = copo(R, G, answers=ANSWERS, global_form="prompt", eps=0.0)
    expected = W_HARD * LOCAL + (1 - W_HARD) * (-0.25 / math.sqrt(2 * 0.25**2))
    assert expected == pytest.approx(-0.501206, abs=1e-6)
    assert adv[0].item() == pytest.approx(expected, rel=1e-9)
    assert adv[0] < 0


def test_response_form_rewards_the_correct_answer_of_a_hard_prompt():
    # Per-response global term: batch rewards [1,0,0,0,1,1,1,0], mean 0.5,
    #   unbiased std = sqrt(8 * 0.25 / 7) = 0.534522 -> A_global(correct) = 0.5 / 0.534522 = 0.935414
    #   A = 0.093290 * 1.5 + 0.906710 * 0.935414 = 0.139935 + 0.848150 = 0.988084 > 0
    adv = copo(R, G, answers=ANSWERS, global_form="response", eps=0.0)
    expected = W_HARD * LOCAL + (1 - W_HARD) * (0.5 / math.sqrt(8 * 0.25 / 7))
    assert expected == pytest.approx(0.988084, abs=1e-6)
    assert adv[0].item() == pytest.approx(expected, rel=1e-9)
    # Under the per-response form every correct answer gets more than every wrong one.
    assert adv[R == 1].min() > adv[R == 0].max()
    assert torch.equal(copo(R, G, answers=ANSWERS, eps=0.0), adv)  # the default form


def test_entropy_gate_values():
    # Six responses with six distinct answers: H = ln 6 = 1.791759,
    #   w = sigmoid(20 (1.791759 - 1.5)) = sigmoid(5.835189) = 0.997086 -> mostly GRPO.
    # One answer shared by all six: H = 0, w = sigmoid(-30) = 9.4e-14 -> the global term alone.
    r = t([1, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0])
    g = ids([0] * 6 + [1] * 6)
    answers = ids([0, 1, 2, 3, 4, 5, 7, 7, 7, 7, 7, 7])
    adv = copo(r, g, answers=answers, eps=0.0)
    local = grpo(r, g, eps=0.0)
    glob = (r - r.mean()) / r.std()
    w0, w1 = sigmoid(20 * (math.log(6) - 1.5)), sigmoid(-30.0)
    assert w0 == pytest.approx(0.997086, abs=1e-6)
    assert torch.allclose(adv[:6], w0 * local[:6] + (1 - w0) * glob[:6], atol=1e-12)
    assert torch.allclose(adv[6:], w1 * local[6:] + (1 - w1) * glob[6:], atol=1e-12)


def test_cluster_ids_only_need_to_be_unique_within_a_prompt():
    # The same id in two prompts is two clusters: renumbering one prompt's ids changes nothing.
    a = copo(R, G, answers=ANSWERS)
    b = copo(R, G, answers=ids([10, 11, 12, 13, 0, 0, 0, 1]))
    assert torch.equal(a, b)


def test_keeps_a_signal_in_constant_groups_and_is_zero_for_a_constant_batch():
    # All-correct group 0 next to an all-wrong group 1: GRPO is 0, the global term is not.
    r, g = t([1, 1, 1, 1, 0, 0, 0, 0]), ids([0, 0, 0, 0, 1, 1, 1, 1])
    for form in ("response", "prompt"):
        adv = copo(r, g, answers=ids([0] * 8), global_form=form)
        assert (adv[:4] > 0).all() and (adv[4:] < 0).all()
        same = copo(torch.ones(8, dtype=F64), g, answers=torch.arange(8), global_form=form)
        assert (same == 0).all()


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="needs answers=\\[N\\] long"):
        copo(R, G)
    with pytest.raises(ValueError, match="answers must be \\[N\\] integer ids with N=8"):
        copo(R, G, answers=ids([0, 1]))
    with pytest.raises(ValueError, match="global_form must be one of response, prompt; got 'batch'"):
        copo(R, G, answers=ANSWERS, global_form="batch")
    with pytest.raises(ValueError, match="gamma .* must be >= 0, got -1"):
        copo(R, G, answers=ANSWERS, gamma=-1.0)
