"""The pieces of one training step, as functions the recipe calls in order.

    problems -> rollout (G per prompt) -> score -> advantages -> policy update -> weight sync

Each function takes typed objects and returns typed objects; none of them reads a config
object inside the math. The recipe (`recipes/grpo_math.py`) shows the whole loop on one page.

Batching: a rollout batch of N rows is split into `mini_batches` optimizer steps, each
mini-batch into micro-batches under a token budget. Splits keep groups together, so the
shared-prefix forward encodes each prompt once per micro-batch. Every micro-batch loss is
weighted by its share of the mini-batch (tokens for `token_mean`, rows otherwise), so the
accumulated gradient is the gradient of the mini-batch loss whatever the micro split.
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from rlkit.algorithms.advantages import get_advantage
from rlkit.algorithms.losses import LossInputs, PolicyLoss
from rlkit.data import Problem
from rlkit.rollout.types import RolloutBatch, SamplingConfig
from rlkit.trainer.prefix import ForwardBatch, compute_logprobs

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- rewards


@dataclass
class RewardFunction:
    name: str
    fn: Callable[..., list]
    weight: float = 1.0
    params: dict = field(default_factory=dict)


@dataclass
class ScoredRollouts:
    rewards: Tensor                 # [N] weighted sum over reward functions
    columns: dict[str, Tensor]      # reward name -> [N] raw values (None -> 0)
    correct: Tensor                 # [N] bool: first reward function scored >= 1 (accuracy)
    failures: dict[str, int]        # reward name -> calls that raised (rows scored 0)
    missing: dict[str, int]         # reward name -> rows that returned None

    def select(self, rows: Tensor) -> ScoredRollouts:
        """These rows' scores; the failure and missing counts stay those of the whole call."""
        return ScoredRollouts(self.rewards[rows], {k: v[rows] for k, v in self.columns.items()},
                              self.correct[rows], dict(self.failures), dict(self.missing))

    @staticmethod
    def concat(parts: Sequence[ScoredRollouts]) -> ScoredRollouts:
        """Rows of all parts in order; failure and missing counts summed."""
        return ScoredRollouts(
            torch.cat([p.rewards for p in parts]),
            {k: torch.cat([p.columns[k] for p in parts]) for k in parts[0].columns},
            torch.cat([p.correct for p in parts]),
            {k: sum(p.failures[k] for p in parts) for k in parts[0].failures},
            {k: sum(p.missing[k] for p in parts) for k in parts[0].missing},
        )


def score_rollouts(batch: RolloutBatch, problems: Sequence[Problem], reward_fns: Sequence[RewardFunction]) -> ScoredRollouts:
    """Call every reward function once on the whole batch; a failing function is logged,
    counted, and contributes 0 instead of stopping the run."""
    g = batch.group_size
    rows = [problems[i // g] for i in range(len(batch.completion_texts))]  # row -> its problem
    prompts = [batch.prompt_texts[i // g] for i in range(len(rows))]
    fields: dict[str, list] = {"answer": [p.answer for p in rows]}
    for key in sorted({k for p in rows for k in p.fields}):
        if key not in fields:
            fields[key] = [p.fields.get(key) for p in rows]
    fields["completion_lengths"] = batch.completion_lengths.tolist()
    n = len(rows)
    total = torch.zeros(n)
    columns, failures, missing = {}, {}, {}
    for rf in reward_fns:
        try:
            values = rf.fn(prompts, list(batch.completion_texts), **fields, **rf.params)
            if len(values) != n:
                raise ValueError(f"returned {len(values)} values for {n} completions")
            failures[rf.name] = 0
        except Exception:  # noqa: BLE001 - a user reward must not kill a long run
            log.warning("reward '%s' failed; scoring its rows 0 this step:\n%s", rf.name, traceback.format_exc())
            values, failures[rf.name] = [None] * n, 1
        missing[rf.name] = sum(v is None for v in values)
        col = torch.tensor([0.0 if v is None else float(v) for v in values])
        columns[rf.name] = col
        total += rf.weight * col
    first = columns[reward_fns[0].name]
    return ScoredRollouts(total, columns, first >= 1.0, failures, missing)


def informative_groups(rewards: Tensor, group_size: int) -> list[int]:
    """Prompts whose G rewards are not all equal: the only groups a group-relative advantage
    learns from (all-correct and all-wrong groups get zero advantage). rewards: [B*G]."""
    r = rewards.view(-1, group_size)  # [B, G]
    return torch.nonzero(r.amax(-1) > r.amin(-1)).flatten().tolist()


@dataclass
class Collected:
    """What one step trains on, after optional dynamic sampling."""

    batch: RolloutBatch
    problems: list[Problem]
    scored: ScoredRollouts
    metrics: dict[str, float]


def collect_rollouts(
    draw: Callable[[], list[Problem]],
    generate: Callable[[list[Problem]], RolloutBatch],
    score: Callable[[RolloutBatch, list[Problem]], ScoredRollouts],
    *,
    dynamic: bool,
    max_rounds: int,
    pad_id: int,
    all_ranks: Callable[[bool], bool] = lambda done: done,
) -> Collected:
    """Draw prompts, sample and score them; with `dynamic` (DAPO's dynamic sampling), keep only
    informative groups and draw again until as many prompts as one draw gives are kept, or
    `max_rounds` draws were made.

    If the rounds run out, the step trains on the informative groups found (fewer prompts), or,
    with none, on the last draw as it is (all advantages zero: no policy gradient). `all_ranks`
    combines each rank's "done" so ranks draw in lockstep from their shared sampler.
    """
    problems = draw()
    batch = generate(problems)
    scored = score(batch, problems)
    if not dynamic:
        return Collected(batch, problems, scored, {})
    want, g = len(problems), batch.group_size
    kept: list[tuple[RolloutBatch, list[Problem], ScoredRollouts]] = []
    n_kept, rounds, generated = 0, 1, len(problems)
    while True:
        keep = informative_groups(scored.rewards, g)[: want - n_kept]
        if keep:
            kept.append((batch.select_groups(keep), [problems[b] for b in keep], scored.select(batch.group_rows(keep))))
            n_kept += len(keep)
        if all_ranks(n_kept >= want or rounds >= max_rounds):
            break
        problems = draw()  # every rank draws, so the sampler stays one state across ranks
        rounds += 1
        if n_kept < want:
            batch = generate(problems)
            scored = score(batch, problems)
            generated += len(problems)
        else:  # this rank is full; others still sample
            batch, scored = batch.select_groups([]), scored.select(torch.zeros(0, dtype=torch.long))
    metrics = {"rollout/dynamic_rounds": float(rounds), "rollout/dynamic_kept_frac": n_kept / want,
               "rollout/dynamic_informative_frac": n_kept / generated}
    if not kept:
        log.warning("dynamic sampling: no informative group in %d rounds; training on the last draw "
                    "(all advantages are zero)", rounds)
        return Collected(batch, problems, scored, metrics)
    return Collected(RolloutBatch.concat([k[0] for k in kept], pad_id=pad_id), [p for k in kept for p in k[1]],
                     ScoredRollouts.concat([k[2] for k in kept]), metrics)


# ----------------------------------------------------------------------------- advantages


def compute_advantages(name: str, params: dict, rewards: Tensor, group_ids: Tensor, mask: Tensor) -> Tensor:
    """Registry lookup + call; `[N]` or `[N, T]` depending on the estimator."""
    return get_advantage(name)(rewards, group_ids, mask=mask, **params)


# ----------------------------------------------------------------------------- batching


def split_rows(batch: RolloutBatch, num_chunks: int) -> list[Tensor]:
    """Split row indices into `num_chunks` nearly equal parts, whole groups first."""
    g, b = batch.group_size, batch.num_prompts
    if num_chunks <= b:
        groups = torch.arange(b).tensor_split(num_chunks)
        return [torch.cat([torch.arange(i * g, (i + 1) * g) for i in part.tolist()]) for part in groups]
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
    """The rows `rows` of a rollout batch, trimmed to their longest completion."""
    t = max(1, int(batch.completion_lengths[rows].max()))
    used = sorted(set(batch.prompt_index[rows].tolist()))
    remap = {p: i for i, p in enumerate(used)}
    return ForwardBatch(
        prompt_ids=[batch.prompt_ids[p] for p in used],
        completion_ids=batch.completion_ids[rows, :t],
        completion_mask=batch.completion_mask[rows, :t],
        group_ids=batch.group_ids[rows],
        prompt_index=torch.tensor([remap[int(p)] for p in batch.prompt_index[rows]]),
    )


def _pad_t(x: Tensor, t: int) -> Tensor:
    return torch.nn.functional.pad(x, (0, t - x.shape[1]))


# ----------------------------------------------------------------------------- forward passes


@dataclass
class ForwardSettings:
    temperature: float
    chunk_size: int
    pad_id: int
    shared_prefix: bool
    micro_batch_tokens: int


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


@dataclass
class UpdateResult:
    metrics: dict[str, float]       # averaged over micro-batches
    first_logprobs: Tensor          # [N, T] trainer logprobs at each row's first forward (~ old policy)
    entropy: Tensor                 # [N, T] entropy at each row's first forward
    nonfinite_skips: int


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
    regularizers: Sequence[tuple[float, Callable[[LossInputs], object]]] = (),
) -> UpdateResult:
    """`num_iterations` passes x `mini_batches` optimizer steps over one rollout batch.

    `regularizers`: (coef, term) pairs; each term maps the micro-batch's LossInputs to a
    LossOutput whose loss is added to the policy loss times coef."""
    n, t = batch.completion_ids.shape
    model = policy.unwrapped()
    first_lp, first_ent, seen = torch.zeros(n, t), torch.zeros(n, t), torch.zeros(n, dtype=torch.bool)
    sums: dict[str, float] = {}
    weight_total, skips = 0.0, 0
    token_level = getattr(loss_fn, "agg_mode", "") == "token_mean"
    for _ in range(num_iterations):
        for mini in split_rows(batch, mini_batches):
            micros = micro_batches(mini, batch, fs.micro_batch_tokens, shared_prefix=fs.shared_prefix)
            # ZeRO reduces gradients inside every backward, so all ranks must run as many
            # micro-batches; a rank with fewer (shorter rows) adds zero-weighted repeats.
            real = len(micros)
            micros += [torch.tensor([0])] * (policy.max_across_ranks(real) - real)
            denom = float(batch.completion_mask[mini].sum()) if token_level else float(len(mini))
            for k, rows in enumerate(micros):
                fb = forward_batch(batch, rows)
                tt = fb.completion_ids.shape[1]
                with policy.autocast():
                    out = compute_logprobs(model, fb, shared_prefix=fs.shared_prefix, temperature=fs.temperature,
                                           chunk_size=fs.chunk_size, pad_id=fs.pad_id, with_entropy=True,
                                           entropy_grad=getattr(loss_fn, "entropy_coef", 0.0) != 0)
                ref_lp = None
                if ref_model is not None:
                    with torch.no_grad(), policy.autocast():
                        ref_lp = compute_logprobs(ref_model, fb, shared_prefix=fs.shared_prefix, temperature=fs.temperature,
                                                  chunk_size=fs.chunk_size, pad_id=fs.pad_id, with_entropy=False).logprobs.float()
                adv = advantages[rows] if advantages.dim() == 1 else advantages[rows, :tt]
                dev = out.logprobs.device  # the model's; the rollout tensors live on the CPU
                inputs = LossInputs(
                    logprobs=out.logprobs.float(), mask=fb.completion_mask.to(dev), advantages=adv.to(dev),
                    old_logprobs=None if old_logprobs is None else old_logprobs[rows, :tt].to(dev),
                    engine_logprobs=batch.engine_logprobs[rows, :tt].to(dev),
                    ref_logprobs=None if ref_lp is None else ref_lp.to(dev),
                    entropy=None if out.entropy is None else out.entropy.float(),
                    rewards=None if batch.rewards is None else batch.rewards[rows].to(dev),
                    group_ids=fb.group_ids.to(dev),
                )
                result = loss_fn(inputs)
                for coef, reg in regularizers:  # extra terms, each with its coefficient
                    extra = reg(inputs)
                    result.loss = result.loss + coef * extra.loss
                    result.metrics.update(extra.metrics)
                share = (float(fb.completion_mask.sum()) if token_level else float(len(rows))) / max(denom, 1.0)
                if k >= real:  # a padding micro-batch: gradient and metrics count zero
                    share = 0.0
                loss = result.loss * share
                if not torch.isfinite(loss):
                    skips += 1
                    log.warning("non-finite loss in a micro-batch (rows %s); skipping its gradient", rows.tolist()[:8])
                    loss = sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)
                policy.backward(loss, boundary=k == len(micros) - 1)
                new = ~seen[rows]
                if new.any() and k < real:
                    idx = rows[new]
                    first_lp[idx] = _pad_t(out.logprobs.detach().float().cpu()[new], t)
                    first_ent[idx] = _pad_t(out.entropy.detach().float().cpu()[new], t)
                    seen[idx] = True
                for key, val in result.metrics.items():
                    sums[key] = sums.get(key, 0.0) + share * float(val)
                sums["train/loss"] = sums.get("train/loss", 0.0) + float(loss.detach())
                weight_total += share
    steps = num_iterations * len(split_rows(batch, mini_batches))
    metrics = {k: v / (weight_total if k != "train/loss" else steps) for k, v in sums.items()}
    return UpdateResult(metrics, first_lp, first_ent, skips)


# ----------------------------------------------------------------------------- engine + eval


def sync_weights(engine, policy) -> float:
    """Push the trainer's current weights into the rollout engine; returns seconds taken."""
    from rlkit.rollout.weight_sync import trainer_weights_for_engine
    from rlkit.trainer.deepspeed import gathered_parameters

    t0 = time.perf_counter()
    model = policy.unwrapped()
    with gathered_parameters(model):
        engine.update_weights(trainer_weights_for_engine(model))
    return time.perf_counter() - t0


def engine_weight_mismatch(engine, policy) -> float:
    """Max |engine weight - trainer weight| over all engine parameters (vLLM engines only).

    vLLM fuses projections (`qkv_proj` = [q; k; v], `gate_up_proj` = [gate; up]); the trainer's
    tensors are fused the same way and cast to the engine's dtype before comparing, so a
    correct sync gives exactly 0. This is the check behind the "weights did not update" bug
    reports of other toolkits (ANCHORS.md, section 6).
    """
    from rlkit.rollout.weight_sync import trainer_weights_for_engine
    from rlkit.trainer.deepspeed import gathered_parameters

    llm = getattr(engine, "llm", None)
    if llm is None:
        return float("nan")

    def _grab(worker):
        return {n: p.detach().cpu().clone() for n, p in worker.model_runner.get_model().named_parameters()}

    served = llm.collective_rpc(_grab)[0]
    model = policy.unwrapped()
    with gathered_parameters(model):
        ours = {n: t.detach().cpu() for n, t in trainer_weights_for_engine(model)}
    fused = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
    worst, compared = 0.0, 0
    for name, served_t in served.items():
        if served_t.numel() == 0:
            continue  # the CPU backend moved this weight into a packed kernel buffer; not readable

        parts = next(((k, v) for k, v in fused.items() if f".{k}." in name), None)
        if parts is None:
            expected = ours.get(name)
        else:
            expected = torch.cat([ours[name.replace(parts[0], p)] for p in parts[1]], dim=0)
        if expected is None:
            continue  # e.g. a tied lm_head the engine keeps as its own alias
        diff = (served_t.float() - expected.to(served_t.dtype).float()).abs().max()
        worst = max(worst, float(diff))
        compared += 1
    return worst if compared else float("nan")


def seed_rollout(seed: int, step: int, rank: int = 0) -> None:
    """Seed the sampling RNG for this step, so a resumed run samples what a straight one does.

    The in-process vLLM engine (and transformers.generate) draw from torch's global generator,
    so seeding it per step makes each step's samples a function of (seed, step, rank) alone.
    Each data-parallel rank gets its own stream (rank 0 keeps the single-process one).
    """
    torch.manual_seed(seed * 1_000_003 + step + rank * 7_919_000_003)


def rank_shard(items: Sequence, rank: int, world: int) -> list:
    """This rank's share of a list that every rank holds in the same order: items rank, rank+world, ...

    Every rank draws the step's prompts from one sampler (so its state stays one checkpointable
    value) and keeps its share, so ranks never duplicate work."""
    return list(items[rank::world])


def all_across_ranks(accelerator, flag: bool) -> bool:
    """True when `flag` is True on every data-parallel rank (`flag` on one process)."""
    if accelerator is None or accelerator.num_processes == 1:
        return flag
    from accelerate.utils import gather_object

    return all(gather_object([bool(flag)]))


def mean_across_ranks(accelerator, metrics: dict[str, float], weight: float = 1.0) -> dict[str, float]:
    """Weighted mean of each scalar metric over data-parallel ranks (identity on one process).

    A key missing on some rank is averaged over the ranks that have it. Weights are e.g. the
    number of rows a rank's metrics describe, so a mean of means equals the global mean."""
    if accelerator is None or accelerator.num_processes == 1:
        return metrics
    from accelerate.utils import gather_object

    per_rank = gather_object([(weight, metrics)])
    out: dict[str, float] = {}
    for key in dict.fromkeys(k for _, m in per_rank for k in m):
        pairs = [(w, m[key]) for w, m in per_rank if key in m]
        total = sum(w for w, _ in pairs)
        out[key] = sum(w * v for w, v in pairs) / total if total else float("nan")
    return out


def evaluate(engine, problems: Sequence[Problem], reward_fn: RewardFunction, *, max_new_tokens: int, seed: int,
             accelerator=None) -> dict[str, float]:
    """Greedy accuracy on held-out problems, scored by the first (correctness) reward.

    With several processes each rank decodes its share and the accuracies are combined."""
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    mine = rank_shard(problems, rank, world)
    metrics: dict[str, float] = {}
    if mine:
        seed_rollout(seed, -1, rank)
        batch = engine.generate([p.prompt for p in mine], 1, SamplingConfig(greedy=True, temperature=0.0,
                                                                             max_new_tokens=max_new_tokens))
        scored = score_rollouts(batch, mine, [reward_fn])
        metrics = {"eval/accuracy": float(scored.correct.float().mean()),
                   "eval/completion_len": float(batch.completion_lengths.float().mean())}
    return mean_across_ranks(accelerator, metrics, weight=len(mine)) if problems else {}


def rollout_metrics(batch: RolloutBatch, scored: ScoredRollouts) -> dict[str, float]:
    lengths = batch.completion_lengths.float()
    out = {
        "reward/mean": float(scored.rewards.mean()),
        "reward/std": float(scored.rewards.std()) if len(scored.rewards) > 1 else 0.0,
        "rollout/accuracy": float(scored.correct.float().mean()),
        "rollout/completion_len_mean": float(lengths.mean()),
        "rollout/completion_len_max": float(lengths.max()),
        "rollout/truncated_frac": sum(r == "length" for r in batch.finish_reason) / max(1, len(batch.finish_reason)),
    }
    for name, col in scored.columns.items():
        out[f"reward/{name}/mean"] = float(col.mean())
        out[f"reward/{name}/failures"] = float(scored.failures[name])
        out[f"reward/{name}/missing"] = float(scored.missing[name])
    return out


def finite_or_nan(x: float) -> float:
    return x if math.isfinite(x) else float("nan")
