"""The policy update: batching, forward passes, `policy_update`, and the weight sync after it.

Batching: a rollout batch of N rows is split into `mini_batches` optimizer steps, each
mini-batch into micro-batches under a token budget. Splits keep groups together, so the
shared-prefix forward encodes each prompt once per micro-batch.

Why the update does not depend on the split: each term (the policy loss, each regularizer)
declares whether it averages over tokens or rows (`accumulate`). Its micro-batch value is a
mean over the micro-batch, so it is weighted by the micro-batch's share of the mini-batch's
tokens (or rows) counted over *all* data-parallel ranks, times the number of ranks (DeepSpeed
averages gradients over ranks). The accumulated gradient is then the gradient of the global
mini-batch loss, whatever the micro-batch split and the number of ranks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from rlkit.algorithms.losses import LossInputs, LossOutput, PolicyLoss, masked_mean
from rlkit.algorithms.regularizers import Regularizer
from rlkit.algorithms.token_weights import TokenFeatures
from rlkit.rollout.types import RolloutBatch
from rlkit.trainer.distributed import all_across_ranks, max_across_ranks, sum_across_ranks
from rlkit.trainer.guard import kill_point, test_hook
from rlkit.trainer.prefix import ForwardBatch, compute_logprobs
from rlkit.trainer.sft import SFTBatch, sft_micro_batches, sft_micro_loss

log = logging.getLogger(__name__)

__all__ = ["ForwardSettings", "ScaledRegularizer", "UpdateResult", "batch_logprobs", "forward_batch",
           "micro_batches", "policy_update", "post_update_logprobs", "split_rows", "sync_weights"]


# ----------------------------------------------------------------------------- batching


def split_rows(batch: RolloutBatch, num_chunks: int) -> list[Tensor]:
    """Split row indices into `num_chunks` nearly equal parts, whole groups first."""
    g, b = batch.group_size, batch.num_prompts
    if num_chunks <= b:
        groups = torch.arange(b).tensor_split(num_chunks)
        return [torch.cat([torch.arange(i * g, (i + 1) * g) for i in part.tolist()] or [torch.zeros(0, dtype=torch.long)])
                for part in groups]
    return list(torch.arange(b * g).tensor_split(num_chunks))


def micro_batches(rows: Tensor, batch: RolloutBatch, budget: int, *, shared_prefix: bool) -> list[Tensor]:
    """Greedy packing of `rows` (kept in order) into micro-batches of at most `budget` tokens.

    Cost of a row: its completion length, plus its prompt length unless an earlier row of
    the same prompt is already in the micro-batch and the prefix is shared.
    """
    lengths = batch.completion_lengths
    out, current, cost, seen = [], [], 0, set()
    for r in rows.tolist():
        p = int(batch.prompt_index[r])
        prompt_cost = 0 if (shared_prefix and p in seen) else len(batch.prompt_ids[p])
        c = int(lengths[r]) + prompt_cost
        if current and cost + c > budget:
            out.append(torch.tensor(current))
            current, cost, seen = [], 0, set()
            c = int(lengths[r]) + len(batch.prompt_ids[p])
        current.append(r)
        cost += c
        seen.add(p)
    if current:
        out.append(torch.tensor(current))
    return out


def forward_batch(batch: RolloutBatch, rows: Tensor) -> ForwardBatch:
    """The rows `rows` of a rollout batch with only their prompts, trimmed to their longest
    completion (padding past it is never fed to the model)."""
    t = max(1, int(batch.completion_lengths[rows].max()))
    whole = ForwardBatch(prompt_ids=batch.prompt_ids, completion_ids=batch.completion_ids[:, :t],
                         completion_mask=batch.completion_mask[:, :t], group_ids=batch.group_ids,
                         prompt_index=batch.prompt_index)
    return whole.select(rows)


def _pad_t(x: Tensor, t: int) -> Tensor:
    return torch.nn.functional.pad(x, (0, t - x.shape[1]))


# ----------------------------------------------------------------------------- forward passes


@dataclass(frozen=True)
class ForwardSettings:
    """How the trainer runs its forward passes (the recipe unpacks these from the config)."""

    temperature: float        # the sampling temperature: logprobs are of the sampling distribution
    chunk_size: int           # tokens per chunk of the chunked-vocabulary logprob pass
    pad_id: int               # the engine's pad id (`RolloutEngine.pad_id`)
    shared_prefix: bool       # one copy of each prompt per micro-batch (Prefix Grouper)
    micro_batch_tokens: int   # token budget of one forward/backward
    gen_budget: int           # the rollout's max new tokens (Dr. GRPO's constant normaliser)


@torch.no_grad()
def batch_logprobs(model, batch: RolloutBatch, fs: ForwardSettings, autocast) -> tuple[Tensor, Tensor]:
    """No-grad logprobs and entropy of every row: `([N, T], [N, T])`."""
    n, t = batch.completion_ids.shape
    logp, ent = torch.zeros(n, t), torch.zeros(n, t)
    for rows in micro_batches(torch.arange(n), batch, fs.micro_batch_tokens, shared_prefix=fs.shared_prefix):
        fb = forward_batch(batch, rows)
        with autocast():
            out = compute_logprobs(model, fb, shared_prefix=fs.shared_prefix, temperature=fs.temperature,
                                   chunk_size=fs.chunk_size, pad_id=fs.pad_id, with_entropy=True)
        logp[rows] = _pad_t(out.logprobs.float().cpu(), t)
        ent[rows] = _pad_t(out.entropy.float().cpu(), t)
    return logp, ent


def post_update_logprobs(policy, batch: RolloutBatch, advantages: Tensor, before: Tensor,
                         fs: ForwardSettings) -> Tensor:
    """Logprobs `[N, T]` after the update, for the likelihood-displacement diagnostics.

    Only groups with a row of non-zero advantage are run through the model; the other rows
    keep `before`. The displacement metrics read only tokens with advantage > 0 or < 0, so the
    result is exact, and saturated groups (all right or all wrong) cost nothing."""
    carries = (advantages != 0) if advantages.dim() == 1 else (advantages != 0).any(-1)  # [N]
    groups = sorted(set(batch.prompt_index[carries].tolist()))
    out = before.clone()
    if not groups:
        return out
    sub = batch.select_groups(groups)
    logp, _ = batch_logprobs(policy.unwrapped(), sub, fs, policy.autocast)
    out[batch.group_rows(groups), : logp.shape[1]] = logp
    return out


# ----------------------------------------------------------------------------- update


def _finite_or_zero(loss: Tensor, model, rows: Tensor, what: str) -> tuple[Tensor, int]:
    """(loss, 0), or a zero loss with a zero gradient and 1 when it is not finite (logged)."""
    if torch.isfinite(loss):
        return loss, 0
    log.warning("non-finite %s loss in a micro-batch (rows %s); its optimizer step is discarded",
                what, rows.tolist()[:8])
    return sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad), 1


def _backward(policy, loss: Tensor, boundary: bool, step_bad: bool, accelerator) -> int:
    """Backward one micro-batch; at the boundary the optimizer step is discarded when any rank
    saw a non-finite loss in this step (the ranks agree first). Returns 1 for a discarded step."""
    if not boundary:
        policy.backward(loss, boundary=False)
        kill_point("backward")
        return 0
    discard = not all_across_ranks(accelerator, not step_bad)
    kill_point("before_optimizer")
    policy.backward(loss, boundary=True, discard=discard)
    return int(discard)


@dataclass(frozen=True)
class ScaledRegularizer:
    """A regularizer and the coefficient its loss is added with."""

    coef: float
    term: Regularizer


@dataclass
class UpdateResult:
    metrics: dict[str, Tensor]      # share-weighted means over micro-batches, + policy/entropy, train/loss
    first_logprobs: Tensor          # [N, T] trainer logprobs at each row's first forward (~ old policy)
    entropy: Tensor                 # [N, T] entropy at each row's first forward
    nonfinite_skips: int            # micro-batches whose loss was not finite (gradient skipped)
    applied_steps: int = 0          # optimizer steps taken (a step with a non-finite loss is discarded)


@dataclass(frozen=True)
class _Shares:
    """A mini-batch's token and row counts over all ranks; the divisors of micro-batch weights."""

    tokens: float
    rows: float
    world: int

    def of(self, accumulate: str, mask: Tensor) -> float:
        """Weight of a micro-batch (its `mask` [n, t]) for a term that averages by `accumulate`."""
        if accumulate == "tokens":
            return float(mask.sum()) * self.world / max(self.tokens, 1.0)
        return mask.shape[0] * self.world / max(self.rows, 1.0)


def _forward(policy, model, ref_model, fb: ForwardBatch, batch: RolloutBatch, rows: Tensor, advantages: Tensor,
             old_logprobs: Tensor | None, fs: ForwardSettings, *, entropy_grad: bool,
             features: TokenFeatures | None = None):
    """Forward one micro-batch (and the reference model, if any) -> (ForwardOutput, LossInputs).
    Per-token features computed once per batch (`features`) are sliced to the micro-batch."""
    tt = fb.completion_ids.shape[1]
    with policy.autocast():
        out = compute_logprobs(model, fb, shared_prefix=fs.shared_prefix, temperature=fs.temperature,
                               chunk_size=fs.chunk_size, pad_id=fs.pad_id, with_entropy=True,
                               entropy_grad=entropy_grad)
    ref_lp = None
    if ref_model is not None:
        with torch.no_grad(), policy.autocast():
            ref_lp = compute_logprobs(ref_model, fb, shared_prefix=fs.shared_prefix, temperature=fs.temperature,
                                      chunk_size=fs.chunk_size, pad_id=fs.pad_id, with_entropy=False).logprobs.float()
    adv = advantages[rows] if advantages.dim() == 1 else advantages[rows, :tt]
    dev = out.logprobs.device  # the model's; the rollout tensors live on the CPU

    def rows_of(x: Tensor | None) -> Tensor | None:
        return None if x is None else x[rows, :tt].to(dev)

    inputs = LossInputs(
        logprobs=out.logprobs.float(), mask=fb.completion_mask.to(dev), advantages=adv.to(dev),
        old_logprobs=rows_of(old_logprobs),
        engine_logprobs=rows_of(batch.engine_logprobs),
        ref_logprobs=None if ref_lp is None else ref_lp.to(dev),
        entropy=None if out.entropy is None else out.entropy.float(),
        rewards=None if batch.rewards is None else batch.rewards[rows].to(dev),
        group_ids=fb.group_ids.to(dev),
        token_weights=rows_of(None if features is None else features.token_weights),
        entropy_score=rows_of(None if features is None else features.entropy_score),
        teacher_logprobs=rows_of(None if features is None else features.teacher_logprobs),
        kd_weights=None if features is None or features.kd_weights is None else features.kd_weights[rows].to(dev),
        gen_budget=fs.gen_budget,
    )
    return out, inputs


def policy_update(
    policy,
    loss_fn: PolicyLoss,
    batch: RolloutBatch,
    advantages: Tensor,
    *,
    old_logprobs: Tensor | None,
    ref_model=None,
    fs: ForwardSettings,
    num_iterations: int,
    mini_batches: int,
    regularizers: Sequence[ScaledRegularizer] = (),
    features: TokenFeatures | None = None,
    sft: SFTBatch | None = None,
    sft_coef: float = 1.0,
) -> UpdateResult:
    """`num_iterations` passes x `mini_batches` optimizer steps over one rollout batch.

    What the loss needs is what it declares: `ref_model` must be given exactly when
    `loss_fn.needs_ref_model`, the entropy carries a gradient when `loss_fn.needs_entropy_grad`,
    `features.entropy_score` is there when `loss_fn.needs_entropy_score`. Token weights and
    entropy scores in `features` ([N, T], from the token pass) reach the loss per micro-batch.
    Demonstrations in `sft` (HPT, PACED) join the same optimizer steps: each mini-batch takes
    its share of the SFT rows, whose token-mean NLL (over all ranks) is added with `sft_coef`.
    When given, `sft` must be given on every rank (possibly with zero rows).
    """
    if loss_fn.needs_ref_model and ref_model is None:
        raise ValueError(f"{type(loss_fn).__name__} declares needs_ref_model; pass the reference model")
    if loss_fn.needs_entropy_score and (features is None or features.entropy_score is None):
        raise ValueError(f"{type(loss_fn).__name__} declares needs_entropy_score; pass features.entropy_score")
    n, t = batch.completion_ids.shape
    model = policy.unwrapped()
    accelerator = policy.accelerator
    world = accelerator.num_processes
    first_lp, first_ent, seen = torch.zeros(n, t), torch.zeros(n, t), torch.zeros(n, dtype=torch.bool)
    sums: dict[str, Tensor] = {}  # on the model's device: no host sync per micro-batch
    weight_total, skips, steps, discarded = 0.0, 0, 0, 0
    sft_parts = list(torch.arange(sft.num_rows).tensor_split(mini_batches)) if sft is not None else None
    sft_nll_sum, sft_tokens_seen = 0.0, 0.0
    for _ in range(num_iterations):
        for j, mini in enumerate(split_rows(batch, mini_batches)):
            steps += 1
            micros = micro_batches(mini, batch, fs.micro_batch_tokens, shared_prefix=fs.shared_prefix)
            sft_micros = [] if sft_parts is None or not len(sft_parts[j]) else \
                sft_micro_batches(sft, sft_parts[j], fs.micro_batch_tokens)
            # ZeRO reduces gradients inside every backward, so all ranks must run as many
            # micro-batches; a rank with fewer (shorter rows) adds zero-weighted repeats.
            real = len(micros) + len(sft_micros)
            plan = ([("rl", r) for r in micros] + [("sft", r) for r in sft_micros]
                    + [("pad", torch.tensor([0]))] * (max_across_ranks(accelerator, real) - real))
            shares = _Shares(tokens=sum_across_ranks(accelerator, float(batch.completion_mask[mini].sum())),
                             rows=sum_across_ranks(accelerator, float(len(mini))), world=world)
            sft_tokens = (sum_across_ranks(accelerator, float(sft.mask[sft_parts[j]].sum()))
                          if sft_parts is not None else 0.0)
            step_bad = False  # a non-finite loss on this rank in this optimizer step
            for k, (kind, rows) in enumerate(plan):
                boundary = k == len(plan) - 1
                if kind == "sft":  # a demonstration micro-batch: token-mean NLL over the mini-batch's SFT tokens
                    nll, ntok = sft_micro_loss(model, sft, rows, fs, policy.autocast)
                    loss = nll * (sft_coef * world / max(sft_tokens, 1.0))
                    sft_nll_sum += float(nll.detach())
                    sft_tokens_seen += float(ntok)
                    loss, bad = _finite_or_zero(loss, model, rows, "SFT")
                    skips, step_bad = skips + bad, step_bad or bad
                    discarded += _backward(policy, loss, boundary, step_bad, accelerator)
                    sums["train/loss"] = sums.get("train/loss", 0.0) + loss.detach().float()
                    continue
                fb = forward_batch(batch, rows)
                out, inputs = _forward(policy, model, ref_model, fb, batch, rows, advantages, old_logprobs, fs,
                                       entropy_grad=loss_fn.needs_entropy_grad, features=features)
                padding = kind == "pad"  # a padding micro-batch: gradient and metrics count zero
                share = 0.0 if padding else shares.of(loss_fn.accumulate, fb.completion_mask)
                result = loss_fn(inputs)
                loss = result.loss * share
                metrics = dict(result.metrics)
                for reg in regularizers:  # each term weighted by its own share (tokens or rows)
                    extra: LossOutput = reg.term(inputs)
                    reg_share = 0.0 if padding else shares.of(reg.term.accumulate, fb.completion_mask)
                    loss = loss + reg.coef * reg_share * extra.loss
                    metrics.update(extra.metrics)
                if k == 0 and test_hook("nan_loss"):  # test-only: a NaN loss at a chosen step
                    loss = loss * float("nan")
                loss, bad = _finite_or_zero(loss, model, rows, "policy")
                skips, step_bad = skips + bad, step_bad or bad
                discarded += _backward(policy, loss, boundary, step_bad, accelerator)
                new = ~seen[rows]
                if new.any() and not padding:
                    idx = rows[new]
                    first_lp[idx] = _pad_t(out.logprobs.detach().float().cpu()[new], t)
                    first_ent[idx] = _pad_t(out.entropy.detach().float().cpu()[new], t)
                    seen[idx] = True
                for key, val in metrics.items():
                    sums[key] = sums.get(key, 0.0) + share * val.detach().float()
                sums["train/loss"] = sums.get("train/loss", 0.0) + loss.detach().float()
                weight_total += share
    out_metrics = {k: (v / (steps if k == "train/loss" else max(weight_total, 1e-12))).cpu()
                   for k, v in sums.items()}
    out_metrics["policy/entropy"] = masked_mean(first_ent, batch.completion_mask)
    if sft is not None:
        tokens = sum_across_ranks(accelerator, sft_tokens_seen)
        out_metrics["sft/loss"] = torch.tensor(sum_across_ranks(accelerator, sft_nll_sum) / max(tokens, 1.0))
        out_metrics["sft/rows"] = torch.tensor(sum_across_ranks(accelerator, float(sft.num_rows)))
        out_metrics["sft/truncated"] = torch.tensor(sum_across_ranks(accelerator, float(sft.truncated)))
    return UpdateResult(out_metrics, first_lp, first_ent, skips, applied_steps=steps - discarded)


# ----------------------------------------------------------------------------- weight sync


def sync_weights(engine, policy) -> float:
    """Push the trainer's current weights into the rollout engine; returns seconds taken.

    Under ZeRO-3 `trainer_weights_for_engine` gathers one module at a time (collective: every
    rank runs this)."""
    from rlkit.rollout.weight_sync import trainer_weights_for_engine

    t0 = time.perf_counter()
    engine.update_weights(_kill_after_first(trainer_weights_for_engine(policy.unwrapped())))
    return time.perf_counter() - t0


def _kill_after_first(named_tensors):
    """The weights, passed through; the `weight_sync` kill point sits after the first tensor,
    so a test can cut a run halfway through a sync."""
    for i, item in enumerate(named_tensors):
        yield item
        if i == 0:
            kill_point("weight_sync")
