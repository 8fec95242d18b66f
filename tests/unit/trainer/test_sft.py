"""Demonstrations in the trainer (rlkit/trainer/sft.py): SFT rows, their loss, ReLIFT's SFT step, mixing."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from trainer_helpers import T, tiny_batch, tiny_llama

from rlkit.algorithms.mixing import HPT, check_demo_field, demo_of
from rlkit.algorithms.regularizers import KDRL, LLDS
from rlkit.data.datasets import Problem, arithmetic_problems
from rlkit.trainer.collect import ScoredRollouts
from rlkit.trainer.deepspeed import Policy
from rlkit.trainer.sft import (
    SFTBatch,
    build_sft_batch,
    kd_row_weights,
    mix_step,
    sft_micro_batches,
    sft_micro_loss,
    sft_step,
)
from rlkit.trainer.update import ForwardSettings, ScaledRegularizer

PAD = 0  # a pad id distinct from the tokenizer's EOS


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from rlkit.assets import tiny_model_dir

    return AutoTokenizer.from_pretrained(tiny_model_dir())


def fs(budget: int = 10_000) -> ForwardSettings:
    return ForwardSettings(temperature=1.0, chunk_size=7, pad_id=PAD, shared_prefix=False,
                           micro_batch_tokens=budget, gen_budget=T)


def hand_sft() -> SFTBatch:
    # row 0: prompt [1, 2, 3], demo [10, 11, 12]; row 1: prompt [4, 5], demo [13, 14] (+ one pad)
    return SFTBatch(prompt_ids=[[1, 2, 3], [4, 5]], completion_ids=torch.tensor([[10, 11, 12], [13, 14, PAD]]),
                    mask=torch.tensor([[True, True, True], [True, True, False]]), weights=torch.ones(2), truncated=0)


def plain_nll_rows(model, sft: SFTBatch) -> list[torch.Tensor]:
    """-sum log p of each row's demo tokens, from one plain forward of [prompt; demo] per row."""
    out = []
    for i, prompt in enumerate(sft.prompt_ids):
        demo = sft.completion_ids[i][sft.mask[i]].tolist()
        ids = torch.tensor([prompt + demo])
        logp = model(ids).logits[0].float().log_softmax(-1)  # [len, V]
        # the token at position j is predicted at position j - 1
        pos = torch.arange(len(prompt), len(prompt) + len(demo))
        out.append(-logp[pos - 1, ids[0, pos]].sum())
    return out


# ------------------------------------------------------------------------------------------------ SFT rows


def test_build_sft_batch_appends_eos_and_truncates(tok):
    eos = tok.eos_token_id
    short = tok("42", add_special_tokens=False).input_ids + [eos]
    long_ = tok("one two three four five six seven eight nine ten", add_special_tokens=False).input_ids + [eos]
    max_tokens = len(short)  # the short one fits exactly (not counted as cut), the long one does not
    assert len(long_) > max_tokens
    sft = build_sft_batch(tok, [[1, 2], [3]], ["42", "one two three four five six seven eight nine ten"],
                          max_tokens=max_tokens, pad_id=PAD)
    assert sft.truncated == 1
    assert sft.prompt_ids == [[1, 2], [3]]
    assert sft.completion_ids.shape == (2, max_tokens)
    assert sft.completion_ids[0].tolist() == short and sft.completion_ids[0, -1] == eos
    assert sft.completion_ids[1].tolist() == long_[:max_tokens]  # cut: the EOS is gone
    assert sft.mask.all()
    assert torch.equal(sft.weights, torch.ones(2))
    # a wider budget: nothing cut, row 0 padded after its EOS, mask True exactly on the kept ids
    wide = build_sft_batch(tok, [[1], [2]], ["42", "one two"], max_tokens=64, pad_id=PAD, weights=[0.5, 2.0])
    two = tok("one two", add_special_tokens=False).input_ids + [eos]
    width = max(len(short), len(two))
    assert wide.truncated == 0 and wide.completion_ids.shape == (2, width)
    for i, row in enumerate([short, two]):
        assert wide.mask[i].tolist() == [True] * len(row) + [False] * (width - len(row))
        assert wide.completion_ids[i, : len(row)].tolist() == row
        assert (wide.completion_ids[i, len(row):] == PAD).all()
    assert torch.equal(wide.weights, torch.tensor([0.5, 2.0]))


def test_check_demo_field_lists_the_columns_found():
    problems = [Problem(prompt="p", answer="1", fields={"b": 2, "a": 1}), Problem(prompt="q", answer="2")]
    with pytest.raises(ValueError, match="data.demo_field: no problem has a 'demo' column; the columns are a, b"):
        check_demo_field(problems, "demo")
    with pytest.raises(ValueError, match=r"the columns are \(none\)"):
        check_demo_field([Problem(prompt="p", answer="1")], "demo")
    problems[1].fields["demo"] = "2"
    check_demo_field(problems, "demo")  # one problem has it: accepted
    assert demo_of(problems[1], "demo") == "2"
    assert demo_of(problems[0], "demo") is None
    assert demo_of(Problem(prompt="p", answer="1", fields={"demo": ""}), "demo") is None  # empty counts as none


def test_arithmetic_problems_carry_their_answer_as_demo():
    problems = arithmetic_problems(5, seed=3)
    check_demo_field(problems, "demo")
    for p in problems:
        assert p.fields["demo"] == p.answer == str(p.fields["a"] + p.fields["b"])


def test_sft_micro_batches_pack_by_prompt_plus_demo_tokens():
    sft = hand_sft()  # costs: 3 + 3 = 6, 2 + 2 = 4
    assert [m.tolist() for m in sft_micro_batches(sft, torch.arange(2), 10)] == [[0, 1]]
    assert [m.tolist() for m in sft_micro_batches(sft, torch.arange(2), 9)] == [[0], [1]]


def test_sft_micro_loss_is_the_plain_forward_nll():
    model = tiny_llama()
    sft = hand_sft()
    sft.weights = torch.tensor([0.5, 2.0])
    nll, n = sft_micro_loss(model, sft, torch.arange(2), fs(), contextlib.nullcontext)
    with torch.no_grad():
        r0, r1 = plain_nll_rows(model, sft)
    assert int(n) == 5  # 3 + 2 demo tokens
    assert float(nll.detach()) == pytest.approx(float(0.5 * r0 + 2.0 * r1), abs=1e-5)
    # one row on its own, weight 2
    nll1, n1 = sft_micro_loss(model, sft, torch.tensor([1]), fs(), contextlib.nullcontext)
    assert int(n1) == 2 and float(nll1.detach()) == pytest.approx(float(2.0 * r1), abs=1e-5)


# ------------------------------------------------------------------------------------------------ ReLIFT's SFT step


def decaying_policy(model) -> Policy:
    from accelerate import Accelerator

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return Policy(Accelerator(cpu=True), model, opt, sched, autocast_dtype=None, max_grad_norm=None)


def rl_step(policy: Policy) -> None:
    logits = policy.model(torch.tensor([[1, 2, 3, 4]])).logits
    policy.backward(logits.float().log_softmax(-1)[0, :, 7].mean(), boundary=True)


def test_sft_step_updates_at_its_own_lr_and_leaves_the_schedule():
    a, b = decaying_policy(tiny_llama()), decaying_policy(tiny_llama())
    rl_step(a)
    rl_step(b)
    sft = hand_sft()
    # the SFT gradient on a copy: token-mean NLL over the 5 demo tokens
    twin = copy.deepcopy(a.model)
    r0, r1 = plain_nll_rows(twin, sft)
    ((r0 + r1) / 5).backward()
    grads = {k: p.grad.clone() for k, p in twin.named_parameters()}
    before = {k: p.detach().clone() for k, p in a.model.named_parameters()}
    metrics = sft_step(a, sft, fs(budget=6), lr=0.5)  # budget 6: two micro-batches, one optimizer step
    assert metrics["sft/rows"] == 2.0 and metrics["sft/truncated"] == 0.0
    assert metrics["sft/loss"] == pytest.approx(float((r0 + r1).detach()) / 5, abs=1e-5)
    for k, p in a.model.named_parameters():  # plain SGD: Δθ = -lr ∇
        torch.testing.assert_close(p.detach() - before[k], -0.5 * grads[k], rtol=1e-4, atol=1e-6, msg=k)
    assert a.lr() == pytest.approx(0.1 / 2)  # one scheduler step: 0.1 * 1/(1+1), restored after the SFT step
    rl_step(a)
    rl_step(b)
    # two scheduler steps in both: 0.1 * 1/(1+2)
    assert a.lr() == pytest.approx(0.1 / 3) and a.lr() == b.lr()
    assert a.scheduler.state_dict() == b.scheduler.state_dict()
    assert a.scheduler.last_epoch == 2


# ------------------------------------------------------------------------------------------------ row weights, mixing


def test_kd_row_weights_multiply_the_row_mask_and_group_weights():
    batch = tiny_batch()  # rows 0-3 continue prompt 0, rows 4-7 prompt 1
    correct = torch.tensor([1, 0, 0, 1, 0, 1, 0, 0], dtype=torch.bool)
    kd = [ScaledRegularizer(coef=0.01, term=KDRL(mask="incorrect"))]
    gw = torch.tensor([2.0, 0.0])
    # incorrect mask [0,1,1,0, 1,0,1,1] x group weights [2,2,2,2, 0,0,0,0]
    assert torch.equal(kd_row_weights(kd, correct, batch, gw), torch.tensor([0., 2, 2, 0, 0, 0, 0, 0]))
    assert torch.equal(kd_row_weights(kd, correct, batch, None), torch.tensor([0., 1, 1, 0, 1, 0, 1, 1]))
    assert torch.equal(kd_row_weights([], correct, batch, gw), torch.tensor([2.0] * 4 + [0.0] * 4))
    llds = [ScaledRegularizer(coef=0.2, term=LLDS())]  # no teacher term
    assert kd_row_weights(llds, correct, batch, None) is None
    assert kd_row_weights([], correct, batch, None) is None


def scored(correct: list[int]) -> ScoredRollouts:
    c = torch.tensor(correct, dtype=torch.bool)
    return ScoredRollouts(rewards=c.float(), columns={}, correct=c, failures={}, missing={})


PROBLEMS = [Problem(prompt="p0", answer="7", fields={"demo": "7"}), Problem(prompt="p1", answer="3", fields={"demo": "3"})]


def test_hpt_mix_step_drops_switched_groups_and_learns_their_demo(tok):
    batch = tiny_batch()
    adv = torch.arange(8, dtype=torch.float32)
    # group 0: 0 correct (switches at gamma 0); group 1: 2 correct (stays RL)
    mixed = mix_step(HPT(gamma=0, sft_coef=0.5), 1, batch, scored([0, 0, 0, 0, 1, 0, 1, 0]), adv, PROBLEMS,
                     demo_field="demo", tokenizer=tok, max_tokens=16, pad_id=PAD)
    assert mixed.batch.num_prompts == 1 and mixed.batch.prompt_ids == [[5, 6, 7]]
    assert torch.equal(mixed.advantages, torch.tensor([4.0, 5.0, 6.0, 7.0]))  # group 1's rows
    assert mixed.scored.correct.tolist() == [True, False, True, False]
    assert mixed.correct_counts == [0, 2] and mixed.has_demo == [True, True]
    assert mixed.metrics["hpt/switched_frac"] == 0.5 and mixed.sft_coef == 0.5
    assert mixed.sft.prompt_ids == [[1, 2, 3, 4]]  # group 0's prompt, its demo "7" + EOS
    assert mixed.sft.completion_ids[0].tolist() == tok("7", add_special_tokens=False).input_ids + [tok.eos_token_id]
    assert torch.equal(mixed.sft.weights, torch.ones(1))
    # token-level advantages are sliced to the kept rows too (group 1's longest row is 6)
    adv2 = torch.arange(8 * T, dtype=torch.float32).view(8, T)
    mixed2 = mix_step(HPT(gamma=0), 1, batch, scored([0, 0, 0, 0, 1, 0, 1, 0]), adv2, PROBLEMS,
                      demo_field="demo", tokenizer=tok, max_tokens=16, pad_id=PAD)
    assert torch.equal(mixed2.advantages, adv2[4:])


def test_hpt_mix_step_when_every_group_switches(tok):
    batch = tiny_batch()
    adv = torch.arange(8, dtype=torch.float32)
    mixed = mix_step(HPT(gamma=0), 1, batch, scored([0] * 8), adv, PROBLEMS,
                     demo_field="demo", tokenizer=tok, max_tokens=16, pad_id=PAD)
    assert mixed.batch.num_prompts == 2  # the batch is kept, but nothing is left for the policy gradient
    assert torch.equal(mixed.advantages, torch.zeros(8))
    assert mixed.sft.prompt_ids == [[1, 2, 3, 4], [5, 6, 7]]
    assert mixed.metrics["hpt/switched_frac"] == 1.0


def test_hpt_mix_step_keeps_a_group_without_demonstration_on_rl(tok):
    problems = [Problem(prompt="p0", answer="7"), PROBLEMS[1]]  # group 0 has no demonstration
    mixed = mix_step(HPT(gamma=0), 1, tiny_batch(), scored([0] * 8), torch.ones(8), problems,
                     demo_field="demo", tokenizer=tok, max_tokens=16, pad_id=PAD)
    assert mixed.has_demo == [False, True]
    assert mixed.batch.prompt_ids == [[1, 2, 3, 4]] and torch.equal(mixed.advantages, torch.ones(4))
    assert mixed.sft.prompt_ids == [[5, 6, 7]]
