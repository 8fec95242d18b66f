"""Demonstrations in the trainer: SFT rows, their micro-batches, and ReLIFT's separate SFT step.

A demonstration is a problem's reference completion (`data.demo_field`), tokenized with the
engine's tokenizer after the prompt as the engine renders it, plus EOS, truncated to
`sft.max_tokens` (counted). SFT rows go through the same DeepSpeed engine and the same
chunked logprob path as RL rows, at temperature 1: the loss is the token-mean NLL
(`rlkit.algorithms.distill.sft_nll`), optionally weighted per row (PACED).

Two ways in:
- in the RL step's optimizer step (HPT, PACED's forward stage): `policy_update(..., sft=...)`
  adds SFT micro-batches to each mini-batch, weighted by their share of the SFT tokens;
- as a step of its own (ReLIFT): `sft_step` runs one optimizer step on the SFT rows at its own
  learning rate and leaves the LR schedule where it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from rlkit.algorithms.distill import sft_nll
from rlkit.trainer.distributed import max_across_ranks, sum_across_ranks
from rlkit.trainer.prefix import ForwardBatch, compute_logprobs

__all__ = ["MixedStep", "SFTBatch", "build_sft_batch", "kd_row_weights", "mix_step", "relift_step", "sft_micro_batches", "sft_micro_loss",
           "sft_step"]


@dataclass
class SFTBatch:
    """S demonstration rows: each its own prompt, completion ids right-padded."""

    prompt_ids: list[list[int]]   # S prompts
    completion_ids: Tensor        # [S, L] long
    mask: Tensor                  # [S, L] bool
    weights: Tensor               # [S] float, per-row weight (1 unless PACED)
    truncated: int                # rows cut at sft.max_tokens

    @property
    def num_rows(self) -> int:
        return len(self.prompt_ids)

    def forward_batch(self, rows: Tensor) -> ForwardBatch:
        t = max(1, int(self.mask[rows].sum(-1).max()))
        n = len(rows)
        return ForwardBatch(prompt_ids=[self.prompt_ids[i] for i in rows.tolist()],
                            completion_ids=self.completion_ids[rows, :t], completion_mask=self.mask[rows, :t],
                            group_ids=torch.arange(n), prompt_index=torch.arange(n))


def build_sft_batch(tokenizer, prompt_ids: Sequence[list[int]], demos: Sequence[str], *, max_tokens: int,
                    pad_id: int, weights: Sequence[float] | None = None) -> SFTBatch:
    """Tokenize demonstrations (+ EOS) after their prompts; cut at `max_tokens` (counted)."""
    eos = tokenizer.eos_token_id
    rows, truncated = [], 0
    for demo in demos:
        ids = list(tokenizer(str(demo), add_special_tokens=False).input_ids)
        if eos is not None:
            ids.append(int(eos))
        if len(ids) > max_tokens:
            ids, truncated = ids[:max_tokens], truncated + 1
        rows.append(ids)
    width = max((len(r) for r in rows), default=1)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = True
    w = torch.ones(len(rows)) if weights is None else torch.tensor(list(weights), dtype=torch.float32)
    return SFTBatch([list(p) for p in prompt_ids], ids, mask, w, truncated)


def sft_micro_batches(sft: SFTBatch, rows: Tensor, budget: int) -> list[Tensor]:
    """Greedy packing of `rows` into micro-batches of at most `budget` prompt + demo tokens."""
    out, current, cost = [], [], 0
    for r in rows.tolist():
        c = len(sft.prompt_ids[r]) + int(sft.mask[r].sum())
        if current and cost + c > budget:
            out.append(torch.tensor(current))
            current, cost = [], 0
        current.append(r)
        cost += c
    if current:
        out.append(torch.tensor(current))
    return out


def sft_micro_loss(model, sft: SFTBatch, rows: Tensor, fs, autocast) -> tuple[Tensor, Tensor]:
    """(weighted NLL token-sum, valid tokens) of SFT rows `rows`, at temperature 1."""
    fb = sft.forward_batch(rows)
    with autocast():
        out = compute_logprobs(model, fb, shared_prefix=False, temperature=1.0, chunk_size=fs.chunk_size,
                               pad_id=fs.pad_id, with_entropy=False)
    dev = out.logprobs.device
    return sft_nll(out.logprobs.float(), fb.completion_mask.to(dev), sft.weights[rows].to(dev))


def sft_step(policy, sft: SFTBatch, fs, *, lr: float) -> dict[str, float]:
    """One optimizer step on the SFT rows (this rank's share) at learning rate `lr` (ReLIFT).

    The LR schedule is not advanced and the scheduled learning rate is restored afterwards, so
    the RL steps see the schedule they would see without it. Ranks run equal numbers of
    micro-batches (zero-weighted repeats on a rank with fewer). Departure from ReLIFT: the
    policy's AdamW state is shared with RL (the authors use a second optimizer; one DeepSpeed
    engine holds one)."""
    accelerator = policy.accelerator
    world = accelerator.num_processes
    model = policy.unwrapped()
    rows = torch.arange(sft.num_rows)
    micros = sft_micro_batches(sft, rows, fs.micro_batch_tokens) if sft.num_rows else []
    real = len(micros)
    total = max_across_ranks(accelerator, real)
    if total == 0:
        return {}
    micros += [None] * (total - real)
    tokens = sum_across_ranks(accelerator, float(sft.mask.sum()))
    sched = policy.scheduler
    inner = getattr(sched, "scheduler", sched)  # accelerate wraps the torch scheduler
    saved_state = inner.state_dict()
    saved_lr = [g["lr"] for g in policy.optimizer.param_groups]
    for g in policy.optimizer.param_groups:
        g["lr"] = lr
    nll_total, tok_total = 0.0, 0.0
    try:
        for k, micro in enumerate(micros):
            if micro is None:  # padding: a zero-weight backward keeps the ranks' collectives in step
                loss = sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)
            else:
                nll, n = sft_micro_loss(model, sft, micro, fs, policy.autocast)
                loss = nll * world / max(tokens, 1.0)
                nll_total += float(nll.detach())
                tok_total += float(n)
            policy.backward(loss, boundary=k == total - 1)
    finally:
        inner.load_state_dict(saved_state)
        for g, value in zip(policy.optimizer.param_groups, saved_lr, strict=True):
            g["lr"] = value
    nll_all = sum_across_ranks(accelerator, nll_total)
    return {"sft/loss": nll_all / max(tokens, 1.0), "sft/rows": sum_across_ranks(accelerator, float(sft.num_rows)),
            "sft/truncated": sum_across_ranks(accelerator, float(sft.truncated))}


# ----------------------------------------------------------------------------- mixing, carried out


@dataclass
class MixedStep:
    """A step's rollouts after the mixing mode's plan (rlkit/algorithms/mixing.py)."""

    batch: object                     # RolloutBatch: the groups the RL update keeps
    scored: object                    # ScoredRollouts of those rows
    advantages: Tensor                # their advantages (all 0 when every group switched to SFT)
    sft: SFTBatch | None              # demonstrations joining this step's optimizer steps
    sft_coef: float
    kd_group_weights: Tensor | None   # [B kept] weight of each group's distillation term (PACED)
    correct_counts: list[int]         # per group of the step's full batch
    has_demo: list[bool]              # per group of the step's full batch
    metrics: dict[str, float]


def mix_step(mixer, step: int, batch, scored, advantages: Tensor, problems: Sequence, *, demo_field: str | None,
             tokenizer, max_tokens: int, pad_id: int) -> MixedStep:
    """Carry out `mixer.plan` on this rank's batch: drop the groups it switches to SFT, build
    the SFT rows of the demonstrations it picks, weight the groups' distillation terms."""
    from rlkit.algorithms.mixing import demo_of

    g = batch.group_size
    counts = scored.correct.view(-1, g).sum(-1)  # [B] correct rows per group
    demos = [demo_of(p, demo_field) if demo_field else None for p in problems]
    has_demo = [d is not None for d in demos]
    plan = mixer.plan(step, counts, g, has_demo)
    prompt_ids = batch.prompt_ids
    kd = plan.kd_group_weights
    if plan.keep_groups is not None and len(plan.keep_groups) < batch.num_prompts:
        rows = batch.group_rows(plan.keep_groups)
        t = int(batch.completion_mask[rows].sum(-1).max())
        advantages = advantages[rows] if advantages.dim() == 1 else advantages[rows, :t]
        batch, scored = batch.select_groups(plan.keep_groups), scored.select(rows)
        kd = None if kd is None else kd[plan.keep_groups]
    if plan.zero_pg:  # every group switched: its rollouts are dropped, nothing left for the policy gradient
        advantages = torch.zeros_like(advantages)
    sft = None
    if mixer.demos_in_step(step):
        sft = build_sft_batch(tokenizer, [prompt_ids[b] for b in plan.demo_groups],
                              [demos[b] for b in plan.demo_groups], max_tokens=max_tokens, pad_id=pad_id,
                              weights=plan.demo_weights)
    return MixedStep(batch, scored, advantages, sft, plan.sft_coef, kd, counts.tolist(), has_demo, dict(plan.metrics))


def relift_step(mixer, step: int, policy, fs, *, indices: Sequence[int], mixed: MixedStep, problems: Sequence,
                demo_field: str, tokenizer, chat_template: bool, max_tokens: int, pad_id: int) -> dict[str, float]:
    """After the RL update: every rank's hard prompts go to the mixer's buffer (the same on all
    ranks); when it pops a full batch, each rank runs its share in one SFT step (`sft_step`)."""
    from rlkit.algorithms.mixing import demo_of, hard_items
    from rlkit.rollout.engine import render_prompts
    from rlkit.trainer.distributed import gather_across_ranks, rank_shard

    acc = policy.accelerator
    hard = hard_items(indices, mixed.correct_counts, mixed.has_demo, lambda i: problems[i].prompt)
    picked = mixer.after_update(step, gather_across_ranks(acc, hard))
    metrics = {"relift/buffer": float(len(mixer.buffer)), "relift/sft_step": float(bool(picked))}
    if picked:
        mine = [problems[i] for i in rank_shard(picked, acc.process_index, acc.num_processes)]
        _, prompt_ids = render_prompts(tokenizer, [p.prompt for p in mine], chat_template=chat_template)
        sft = build_sft_batch(tokenizer, prompt_ids, [demo_of(p, demo_field) for p in mine],
                              max_tokens=max_tokens, pad_id=pad_id)
        metrics.update(sft_step(policy, sft, fs, lr=mixer.lr))
    return metrics


def kd_row_weights(regularizers: Sequence, correct: Tensor, batch, group_weights: Tensor | None) -> Tensor | None:
    """Per-row weights [N] of the distillation terms: each teacher term's own row mask (KDRL's
    none / incorrect / group) times a per-group weight (PACED's w) spread over the group's rows.
    None when no teacher term defines row weights and no group weights are given."""
    w = None
    for reg in regularizers:
        if reg.term.needs_teacher:
            rw = reg.term.row_weights(correct, batch.group_ids)
            if rw is not None:
                w = rw if w is None else w * rw
    if group_weights is not None:
        gw = group_weights.float()[batch.prompt_index]
        w = gw if w is None else w * gw
    return w
