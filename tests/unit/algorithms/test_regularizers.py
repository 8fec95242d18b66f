"""Regularizers: LLDS penalty values by hand, its gates, the registry and config checks."""

from __future__ import annotations

import pytest
import torch

from rlkit.algorithms.losses import LossInputs
from rlkit.algorithms.regularizers import LLDS, build_regularizer, llds_penalty
from rlkit.config import ConfigError, load_config

CPU_CONFIG = "recipes/configs/grpo_math_cpu.yaml"


def _rows():
    # row 0: A = +1, delta = old - new = [0.5, -0.2, 0.2] -> sum 0.5 > 0: active
    # row 1: A = 0 (preserved: A >= 0), delta = [-0.5, -0.5, 0.2, 0.1] -> sum -0.7: inactive
    # row 2: A = -1: not preserved whatever its delta
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    old = torch.tensor([[-1.0, -1.0, -1.0, 0.0], [-1.0, -1.0, -1.0, -1.0], [-1.0, -1.0, 0.0, 0.0]])
    new = torch.tensor([[-1.5, -0.8, -1.2, 0.0], [-0.5, -0.5, -1.2, -1.1], [-3.0, -3.0, 0.0, 0.0]])
    adv = torch.tensor([1.0, 0.0, -1.0])
    return mask, old, new.requires_grad_(), adv


def test_llds_penalty_by_hand_response_gate():
    mask, old, new, adv = _rows()
    pen, metrics = llds_penalty(new, old, adv, mask, gate="response")
    want = torch.tensor([[0.5, 0.0, 0.2, 0.0], [0.0] * 4, [0.0] * 4])
    torch.testing.assert_close(pen.detach(), want)
    # 3 of the 7 preserved tokens (rows 0, 1) are active; 4 have delta > 0 (0.5, 0.2, 0.2, 0.1)
    assert float(metrics["reg/llds/active_frac"]) == pytest.approx(3 / 7)
    assert float(metrics["reg/llds/displaced_frac"]) == pytest.approx(4 / 7)


def test_llds_loss_is_token_mean_over_all_response_tokens_and_pushes_likelihood_up():
    mask, old, new, adv = _rows()
    out = LLDS(gate="response")(LossInputs(logprobs=new, mask=mask, advantages=adv, old_logprobs=old))
    # (0.5 + 0.2) / 9 response tokens
    assert float(out.loss.detach()) == pytest.approx(0.7 / 9)
    out.loss.backward()
    # d/d new of max(0, old - new) / 9 = -1/9 where the penalty is positive, 0 elsewhere:
    # minimising it raises the displaced tokens' likelihood
    want = torch.zeros(3, 4)
    want[0, 0] = want[0, 2] = -1 / 9
    torch.testing.assert_close(new.grad, want)


def test_action_gate_treats_each_turn_on_its_own():
    # two turns (mask gap at t=2), A = +1. delta = [0.3, -0.1, -, -0.4, 0.1]:
    # turn 1 sums to 0.2 > 0 (active), turn 2 to -0.3 (inactive); the whole response to -0.1
    mask = torch.tensor([[1, 1, 0, 1, 1]], dtype=torch.bool)
    old = torch.zeros(1, 5)
    new = torch.tensor([[-0.3, 0.1, 0.0, 0.4, -0.1]])
    adv = torch.tensor([1.0])
    action, _ = llds_penalty(new, old, adv, mask, gate="action")
    response, _ = llds_penalty(new, old, adv, mask, gate="response")
    torch.testing.assert_close(action, torch.tensor([[0.3, 0.0, 0.0, 0.0, 0.0]]))
    torch.testing.assert_close(response, torch.zeros(1, 5))


def test_token_level_advantages_preserve_only_non_negative_tokens():
    mask = torch.ones(1, 3, dtype=torch.bool)
    old, new = torch.zeros(1, 3), torch.full((1, 3), -0.1)  # every token displaced by 0.1
    adv = torch.tensor([[1.0, -1.0, 0.5]])
    pen, _ = llds_penalty(new, old, adv, mask, gate="response")
    torch.testing.assert_close(pen, torch.tensor([[0.1, 0.0, 0.1]]))


def test_registry_errors_name_the_choices():
    with pytest.raises(Exception, match="unknown regularizer 'lld'; did you mean 'llds'\\? Registered: kdrl, llds"):
        build_regularizer("lld")
    with pytest.raises(TypeError, match="params.gat: unknown parameter of regularizer 'llds' \\(LLDS\\); did you mean 'gate'\\? Accepted: gate"):
        build_regularizer("llds", gat="action")
    with pytest.raises(ValueError, match="choose one of action, response"):
        build_regularizer("llds", gate="chunk")


def test_config_accepts_llds_with_two_updates_and_trainer_old_logprobs():
    cfg = load_config(CPU_CONFIG, ['regularizers=[{name: llds, coef: 0.2}]', "trainer.mini_batches=2",
                                   "trainer.use_engine_logprobs=false"])
    assert cfg.regularizers[0].name == "llds" and cfg.regularizers[0].coef == 0.2


@pytest.mark.parametrize("overrides, message", [
    (["trainer.use_engine_logprobs=false"], "is zero on the first update; set trainer.mini_batches"),
    (["trainer.mini_batches=2"], "set trainer.use_engine_logprobs: false"),
])
def test_config_explains_what_llds_needs(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CPU_CONFIG, ['regularizers=[{name: llds, coef: 0.2}]', *overrides])


def test_config_suggests_a_close_regularizer_name():
    with pytest.raises(ConfigError, match="regularizers.0.name: unknown value 'lldss'; did you mean 'llds'"):
        load_config(CPU_CONFIG, ['regularizers=[{name: lldss, coef: 0.2}]'])
