"""What comes out of rollouts: scoring, dynamic sampling, advantages, evaluation.

    prompts -> engine.generate -> score_rollouts -> (dynamic sampling) -> compute_advantages

Every function takes typed objects and returns typed objects; the math inside never reads a
config. `collect_rollouts` times its own phases, so the recipe's step stays flat.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from rlkit.algorithms.advantages import get_advantage
from rlkit.algorithms.answers import answer_ids
from rlkit.data import Problem
from rlkit.rollout.types import RolloutBatch, SamplingConfig
from rlkit.trainer.distributed import mean_across_ranks, rank_shard

log = logging.getLogger(__name__)

__all__ = ["Collected", "RewardFunction", "ScoredRollouts", "collect_rollouts", "compute_advantages", "evaluate",
           "informative_groups", "nonfinite_rows", "pass_at_k", "reward_inputs", "rollout_metrics", "score_rollouts",
           "seed_rollout"]


# ----------------------------------------------------------------------------- rewards


@dataclass
class RewardFunction:
    name: str
    fn: Callable[..., list]
    weight: float = 1.0
    params: dict = field(default_factory=dict)
    timeout_s: float | None = None  # a call running longer fails (rows scored 0, counted)
    conversational: bool = False    # TRL's conversational format: prompts and completions as messages


def _call_with_timeout(fn: Callable[..., list], timeout_s: float | None, kwargs: dict) -> list:
    """fn(**kwargs), or TimeoutError after `timeout_s`. A Python call cannot be killed:
    a hung one is left running in a daemon thread (it dies with the process) and the step
    goes on without it."""
    if timeout_s is None:
        return fn(**kwargs)
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = fn(**kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's guard
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True, name="rlkit-reward")
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"did not return within rollout.reward_timeout_s={timeout_s} s")
    if "error" in out:
        raise out["error"]
    return out["value"]


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


# What rlkit itself passes to a reward; a dataset column of the same name is not passed (TRL
# likewise drops its `prompt`, `completion` and `completion_ids` columns).
_CALL_KEYS = frozenset({"prompts", "completions", "completion_ids", "completion_lengths"})


def reward_inputs(batch: RolloutBatch, problems: Sequence[Problem], *, conversational: bool) -> dict[str, list]:
    """The keyword arguments of one reward call, one list entry per completion (N = B*G):

    - `prompts`: text (conversational=False): the templated prompt the engine conditioned on;
      messages (True): the prompt as a message list, a text prompt wrapped as one user turn
      (with data.system_prompt it already is a list).
    - `completions`: the text, or TRL's conversational form [{"role": "assistant", "content": text}].
    - `completion_ids`: the generated token ids (unpadded), as TRL passes them.
    - `completion_lengths`, `answer` (the reference read by data.answer_format) and every other
      dataset column of the row (`row_fields`).
    """
    g = batch.group_size
    rows = [problems[i // g] for i in range(len(batch.completion_texts))]  # row -> its problem
    fields: dict[str, list] = {}
    for key in sorted({k for p in rows for k in p.fields} - _CALL_KEYS):
        fields[key] = [p.fields.get(key) for p in rows]
    fields["answer"] = [p.answer for p in rows]
    if conversational:
        prompts: list = [[{"role": "user", "content": p.prompt}] if isinstance(p.prompt, str) else list(p.prompt)
                         for p in rows]
        completions: list = [[{"role": "assistant", "content": text}] for text in batch.completion_texts]
    else:
        prompts = [batch.prompt_texts[i // g] for i in range(len(rows))]
        completions = list(batch.completion_texts)
    ids = [row[mask].tolist() for row, mask in zip(batch.completion_ids, batch.completion_mask, strict=True)]
    return {"prompts": prompts, "completions": completions, "completion_ids": ids,
            "completion_lengths": batch.completion_lengths.tolist(), **fields}


def score_rollouts(batch: RolloutBatch, problems: Sequence[Problem], reward_fns: Sequence[RewardFunction]) -> ScoredRollouts:
    """Call every reward function once on the whole batch, all arguments by keyword (so TRL's
    `fn(completions, **kwargs)` works as well as rlkit's `fn(prompts, completions, **kw)`);
    a failing function is logged, counted, and contributes 0 instead of stopping the run."""
    n = len(batch.completion_texts)
    total = torch.zeros(n)
    columns, failures, missing = {}, {}, {}
    for rf in reward_fns:
        # built per call: a reward that edits its lists in place cannot change the next one's
        # inputs; a param named like a column is the param (settings win over data)
        kwargs = {**reward_inputs(batch, problems, conversational=rf.conversational), **rf.params}
        try:
            values = _call_with_timeout(rf.fn, rf.timeout_s, kwargs)
            if len(values) != n:
                raise ValueError(f"returned {len(values)} values for {n} completions")
            # inside the guard: a reward returning strings fails here, not later in the step
            col = torch.tensor([0.0 if v is None else float(v) for v in values])
            failures[rf.name] = 0
        except Exception:  # noqa: BLE001 - a user reward must not kill a long run
            log.warning("reward '%s' failed; scoring its rows 0 this step:\n%s", rf.name, traceback.format_exc())
            values, failures[rf.name] = [None] * n, 1
            col = torch.zeros(n)
        missing[rf.name] = sum(v is None for v in values)
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
    drawn: list[int]                # indices of every prompt this rank drew (all rounds)
    indices: list[int]              # problem index of each of the batch's groups (its `problems`)
    observed: list[tuple[int, int, int]]  # (problem index, correct rows, rows) of every group sampled
    generate_seconds: float         # wall time in the engine
    score_seconds: float            # wall time in the reward functions
    metrics: dict[str, float]       # dynamic-sampling statistics (empty when off)


def collect_rollouts(
    draw: Callable[[], list[int]],
    problems: Sequence[Problem],
    generate: Callable[[list[Problem]], RolloutBatch],
    reward_fns: Sequence[RewardFunction],
    *,
    dynamic: bool,
    max_rounds: int,
    pad_id: int,
    all_ranks: Callable[[bool], bool] = lambda done: done,
    first: tuple[list[int], Callable[[], RolloutBatch]] | None = None,
) -> Collected:
    """Draw prompt indices (`draw`), sample (`generate`) and score them; with `dynamic` (DAPO's
    dynamic sampling), keep only informative groups and draw again until as many prompts as
    one draw gives are kept, or `max_rounds` draws were made.

    If the rounds run out, the step trains on the informative groups found (fewer prompts), or,
    with none, on the last draw as it is (all advantages zero: no policy gradient). `all_ranks`
    combines each rank's "done" so ranks draw in lockstep from their shared sampler. `first`:
    the first round's indices, already drawn, and a function returning their batch, already
    requested (rollout.async: generated during the previous step); later rounds draw and
    generate as usual.
    """
    drawn: list[int] = []
    observed: list[tuple[int, int, int]] = []  # every sampled group, also those dynamic sampling drops
    seconds = {"generate": 0.0, "score": 0.0}

    def sample(idx: list[int], made: Callable[[], RolloutBatch] | None = None
               ) -> tuple[RolloutBatch, list[int], ScoredRollouts]:
        drawn.extend(idx)
        chosen = [problems[i] for i in idx]
        t0 = time.perf_counter()
        batch = generate(chosen) if made is None else made()
        t1 = time.perf_counter()
        scored = score_rollouts(batch, chosen, reward_fns)
        seconds["generate"] += t1 - t0
        seconds["score"] += time.perf_counter() - t1
        g = batch.group_size
        wins = scored.correct.view(-1, g).sum(-1).tolist() if len(idx) else []  # [B] correct rows per group
        observed.extend((i, int(w), g) for i, w in zip(idx, wins, strict=True))
        return batch, list(idx), scored

    def done(batch, chosen, scored, metrics) -> Collected:
        return Collected(batch, [problems[i] for i in chosen], scored, drawn, chosen, observed,
                         seconds["generate"], seconds["score"], metrics)

    batch, chosen, scored = sample(*first) if first is not None else sample(draw())
    if not dynamic:
        return done(batch, chosen, scored, {})
    want, g = len(chosen), batch.group_size
    kept: list[tuple[RolloutBatch, list[int], ScoredRollouts]] = []
    n_kept, rounds, generated = 0, 1, len(chosen)
    while True:
        keep = informative_groups(scored.rewards, g)[: want - n_kept]
        if keep:
            kept.append((batch.select_groups(keep), [chosen[b] for b in keep], scored.select(batch.group_rows(keep))))
            n_kept += len(keep)
        if all_ranks(n_kept >= want or rounds >= max_rounds):
            break
        idx = draw()  # every rank draws, so the sampler stays one state across ranks
        rounds += 1
        if n_kept < want:
            batch, chosen, scored = sample(idx)
            generated += len(chosen)
        else:  # this rank is full; others still sample
            batch, scored = batch.select_groups([]), scored.select(torch.zeros(0, dtype=torch.long))
    metrics = {"rollout/dynamic_rounds": float(rounds), "rollout/dynamic_kept_frac": n_kept / want,
               "rollout/dynamic_informative_frac": n_kept / generated}
    if not kept:
        log.warning("dynamic sampling: no informative group in %d rounds; training on the last draw "
                    "(all advantages are zero)", rounds)
        return done(batch, chosen, scored, metrics)
    return done(RolloutBatch.concat([k[0] for k in kept], pad_id=pad_id), [p for k in kept for p in k[1]],
                ScoredRollouts.concat([k[2] for k in kept]), metrics)


# ----------------------------------------------------------------------------- advantages


def compute_advantages(name: str, params: dict, batch: RolloutBatch, rewards: Tensor, *,
                       answer_extractor: str | None = None) -> Tensor:
    """Registry lookup + call; `[N]` or `[N, T]` depending on the estimator.

    An estimator that declares `needs_answers` (COPO) also gets answer-cluster ids of the
    batch's completions, read by `answer_extractor`; the others never pay for the extraction."""
    fn = get_advantage(name)
    extra = {}
    if fn.needs_answers:
        if answer_extractor is None:
            raise ValueError(f"advantage estimator {name!r} declares needs_answers; set advantage.answer_extractor")
        extra["answers"] = answer_ids(batch.completion_texts, batch.group_ids, answer_extractor)
    return fn(rewards, batch.group_ids, mask=batch.completion_mask, **extra, **params)


def nonfinite_rows(rewards: Tensor, advantages: Tensor) -> list[int]:
    """Rows whose reward or advantage (any token of it) is NaN or infinite."""
    bad = ~torch.isfinite(rewards)
    adv_bad = ~torch.isfinite(advantages)
    bad |= adv_bad if adv_bad.dim() == 1 else adv_bad.any(-1)
    return torch.nonzero(bad).flatten().tolist()


# ----------------------------------------------------------------------------- evaluation and metrics


def seed_rollout(seed: int, step: int, rank: int = 0) -> None:
    """Seed the sampling RNG for this step, so a resumed run samples what a straight one does.

    The in-process vLLM engine (and transformers.generate) draw from torch's global generator,
    so seeding it per step makes each step's samples a function of (seed, step, rank) alone.
    Each data-parallel rank gets its own stream (rank 0 keeps the single-process one).
    """
    torch.manual_seed(seed * 1_000_003 + step + rank * 7_919_000_003)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem from n samples of which c are correct (Chen et al. 2021,
    "Evaluating Large Language Models Trained on Code", arXiv 2107.03374, Fig. 3):

        pass@k = 1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k/i)

    the chance that a random k-subset of the n samples holds a correct one. The product form
    never builds the binomials, which overflow floats for n in the hundreds. n - c < k: every
    k-subset holds a correct sample, so 1.0. pass@1 = c / n."""
    if not 1 <= k <= n or not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs 1 <= k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    miss = 1.0  # C(n-c, k) / C(n, k) as a running product
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


# evaluate() seeds its two generate calls with these step numbers (training steps are >= 1),
# so evaluating at any point of a run, or of its resumed twin, draws the same samples.
_GREEDY_EVAL_STEP, _SAMPLED_EVAL_STEP = -1, -2


def evaluate(engine, problems: Sequence[Problem], reward_fn: RewardFunction, *, max_new_tokens: int, seed: int,
             samples: int = 0, temperature: float = 1.0, accelerator=None) -> dict[str, float]:
    """Greedy accuracy on held-out problems, scored by the first (correctness) reward; with
    `samples` = k > 0 also k completions per problem at `temperature`, reported as the
    unbiased `eval/pass@1` and `eval/pass@k` (n = k samples, averaged over problems).

    With several processes each rank evaluates its share of the problems and every metric (a
    mean over problems) is combined weighted by the rank's problem count."""
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    mine = rank_shard(problems, rank, world)
    metrics: dict[str, float] = {}
    if mine:
        prompts = [p.prompt for p in mine]
        seed_rollout(seed, _GREEDY_EVAL_STEP, rank)
        batch = engine.generate(prompts, 1, SamplingConfig(greedy=True, temperature=0.0,
                                                           max_new_tokens=max_new_tokens))
        scored = score_rollouts(batch, mine, [reward_fn])
        metrics = {"eval/accuracy": float(scored.correct.float().mean()),
                   "eval/completion_len": float(batch.completion_lengths.float().mean())}
        if samples:
            seed_rollout(seed, _SAMPLED_EVAL_STEP, rank)
            batch = engine.generate(prompts, samples, SamplingConfig(temperature=temperature,
                                                                     max_new_tokens=max_new_tokens))
            correct = score_rollouts(batch, mine, [reward_fn]).correct.view(len(mine), samples).sum(-1)  # [B]
            for k in sorted({1, samples}):  # k = 1 = samples: one key, not the same value twice
                metrics[f"eval/pass@{k}"] = sum(pass_at_k(samples, c, k) for c in correct.tolist()) / len(mine)
    return mean_across_ranks(accelerator, metrics, weight=len(mine)) if problems else {}


def rollout_metrics(batch: RolloutBatch, scored: ScoredRollouts) -> dict[str, float]:
    lengths = batch.completion_lengths.float()
    out = {
        "reward/mean": float(scored.rewards.mean()),
        "reward/std": float(scored.rewards.std()) if len(scored.rewards) > 1 else 0.0,
        "rollout/accuracy": float(scored.correct.float().mean()),
        "rollout/completion_len_mean": float(lengths.mean()),
        "rollout/completion_len_max": float(lengths.max()),
        # tokens of one templated prompt; with the completion lengths, the step's token count
        # (bench/roofline.py turns it into FLOPs)
        "rollout/prompt_len_mean": sum(map(len, batch.prompt_ids)) / max(1, batch.num_prompts),
        "rollout/truncated_frac": sum(r == "length" for r in batch.finish_reason) / max(1, len(batch.finish_reason)),
    }
    for name, col in scored.columns.items():
        out[f"reward/{name}/mean"] = float(col.mean())
        out[f"reward/{name}/failures"] = float(scored.failures[name])
        out[f"reward/{name}/missing"] = float(scored.missing[name])
    return out
