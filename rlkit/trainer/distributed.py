"""Data-parallel bookkeeping: which rank does what, and the reductions that keep ranks in step.

Every function takes the `accelerate.Accelerator` (or None) and is the identity on one
process, so single-process code pays nothing and needs no branches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["all_across_ranks", "assert_same_across_ranks", "distinct_across_ranks", "gather_across_ranks", "max_across_ranks", "mean_across_ranks",
           "rank_shard", "sum_across_ranks"]


def _world(accelerator) -> int:
    return 1 if accelerator is None else accelerator.num_processes


def rank_shard(items: Sequence, rank: int, world: int) -> list:
    """This rank's share of a list that every rank holds in the same order: items rank, rank+world, ...

    Every rank draws the step's prompts from one sampler (so its state stays one checkpointable
    value) and keeps its share, so ranks never duplicate work."""
    return list(items[rank::world])


def all_across_ranks(accelerator, flag: bool) -> bool:
    """True when `flag` is True on every data-parallel rank."""
    if _world(accelerator) == 1:
        return flag
    from accelerate.utils import gather_object

    return all(gather_object([bool(flag)]))


def max_across_ranks(accelerator, n: int) -> int:
    """The largest `n` over data-parallel ranks."""
    if _world(accelerator) == 1:
        return n
    return int(accelerator.gather(torch.tensor([n], device=accelerator.device)).max())


def sum_across_ranks(accelerator, x: float) -> float:
    """The sum of `x` over data-parallel ranks (e.g. the tokens of a mini-batch, all ranks)."""
    if _world(accelerator) == 1:
        return x
    t = torch.tensor([float(x)], dtype=torch.float64, device=accelerator.device)
    return float(accelerator.gather(t).sum())


def mean_across_ranks(accelerator, metrics: dict[str, float], weight: float = 1.0) -> dict[str, float]:
    """Weighted mean of each scalar metric over data-parallel ranks.

    A key missing on some rank is averaged over the ranks that have it. Weights are e.g. the
    number of rows a rank's metrics describe, so a mean of means equals the global mean."""
    if _world(accelerator) == 1:
        return metrics
    from accelerate.utils import gather_object

    per_rank = gather_object([(weight, {k: float(v) for k, v in metrics.items()})])
    out: dict[str, float] = {}
    for key in dict.fromkeys(k for _, m in per_rank for k in m):
        pairs = [(w, m[key]) for w, m in per_rank if key in m]
        total = sum(w for w, _ in pairs)
        out[key] = sum(w * v for w, v in pairs) / total if total else float("nan")
    return out


def gather_across_ranks(accelerator, items: Sequence) -> list:
    """Every rank's `items`, concatenated in rank order, on every rank (e.g. per-problem
    outcomes that a stateful sampler must see whole, so all ranks keep one state)."""
    if _world(accelerator) == 1:
        return list(items)
    from accelerate.utils import gather_object

    return list(gather_object(list(items)))


def assert_same_across_ranks(accelerator, state: Callable[[], dict], what: str) -> None:
    """Raise on every rank when `state()` (JSON-able state every rank must hold alike) differs
    between ranks: ranks that disagree on shared state draw different data silently. Only a
    fingerprint crosses ranks; on one process `state` is never called."""
    if _world(accelerator) == 1:
        return
    import hashlib
    import json

    from accelerate.utils import gather_object

    digest = hashlib.sha256(json.dumps(state(), sort_keys=True).encode()).hexdigest()[:16]
    values = gather_object([digest])
    if len(set(values)) > 1:
        raise RuntimeError(f"{what} differs between data-parallel ranks: {values}")


def distinct_across_ranks(accelerator, indices: Sequence[int]) -> int:
    """How many different items all ranks together hold (e.g. prompts trained on this step:
    prompts_per_step unless ranks duplicate work)."""
    if _world(accelerator) == 1:
        return len(set(indices))
    from accelerate.utils import gather_object

    return len(set(gather_object(list(indices))))
