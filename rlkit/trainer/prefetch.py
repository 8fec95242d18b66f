"""One-step-off-policy rollouts (`rollout.async`): the next step's rollouts are generated while
this step trains.

    step t:   [take batch t] [score, advantages] [train on batch t ..........] [wait] [sync -> v_t]
    servers:            [generate batch t+1 with the weights v_{t-1} .....]

The trainer draws step t+1's prompts (after step t's sampler update, so the draw order is
the sync run's), hands their generation to one background thread, trains on batch t, waits
for the generation to end, and only then pushes its new weights: a server never reloads
mid-batch, so every row of batch t+1 was sampled by one weight version, one behind the
policy that trains on it (staleness 1). The loss takes the engine's logprobs as the old
policy's (`trainer.use_engine_logprobs`), so its ratio is against the policy that sampled.

The background thread only waits on HTTP (`ServerEngine.generate`): the servers compute,
the trainer's process keeps its cores. Nothing in the thread touches the process group, so
several trainer ranks can each prefetch their share.

A checkpoint written while a prefetch is pending keeps the sampler state from before the
prefetch's draw (`sampler_state`): a run resumed from it draws the same prompts for step
t+1 and generates them again, with its current weights (staleness 0 for that one step).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from rlkit.rollout.types import RolloutBatch

log = logging.getLogger(__name__)

__all__ = ["Prefetch", "RolloutPrefetcher", "overlap_seconds"]


@dataclass
class Prefetch:
    """Rollouts requested ahead for `step`: this rank's prompt indices, and their batch to come."""

    step: int
    indices: list[int]
    sampler_state: dict[str, Any]   # the sampler before this prefetch's draw
    future: Future
    started: float                  # time.perf_counter() when the request went out
    finished: float | None = field(default=None)  # when the batch (or the error) came back

    def result(self) -> RolloutBatch:
        """The batch; re-raises the generation's error (a ServerError) in the caller's thread."""
        return self.future.result()


def overlap_seconds(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Length of the intersection of two time intervals (start, end), 0 when disjoint.
    overlap((0, 3), (2, 5)) = 3 - 2 = 1."""
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


class RolloutPrefetcher:
    """At most one prefetch in flight (max_staleness 1)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlkit-prefetch")
        self.pending: Prefetch | None = None

    def start(self, step: int, indices: list[int], sampler_state: dict[str, Any],
              generate: Callable[[], RolloutBatch]) -> Prefetch:
        """Send `generate()` (the batch of `indices`, for `step`) to the background thread."""
        if self.pending is not None:
            raise RuntimeError(f"a prefetch for step {self.pending.step} is still pending; max_staleness 1 allows one")
        prefetch = Prefetch(step, list(indices), sampler_state, None, time.perf_counter())  # type: ignore[arg-type]

        def run() -> RolloutBatch:
            try:
                return generate()
            finally:
                prefetch.finished = time.perf_counter()

        prefetch.future = self._pool.submit(run)
        self.pending = prefetch
        return prefetch

    def take(self, step: int) -> Prefetch | None:
        """The prefetch made for `step` (it leaves the prefetcher), or None."""
        prefetch = self.pending
        if prefetch is None:
            return None
        if prefetch.step != step:
            raise RuntimeError(f"the pending prefetch is for step {prefetch.step}, not {step}")
        self.pending = None
        return prefetch

    def wait(self) -> float:
        """Block until the pending generation has ended (its error, if any, stays in it for
        `take`); seconds waited. Called before a weight sync."""
        if self.pending is None:
            return 0.0
        t0 = time.perf_counter()
        self.pending.future.exception()  # waits; does not raise the generation's error
        return time.perf_counter() - t0

    def close(self) -> None:
        """Wait for a running generation (its result is dropped) and stop the thread."""
        if self.pending is not None:
            self.wait()
            self.pending = None
        self._pool.shutdown(wait=True)
