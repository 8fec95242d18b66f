"""Run state as types: what a recipe builds once, what changes as it runs, what a step returns.

    Components   frozen: the parts a step uses (policy, loss, engine, data, ...), built by the
                 recipe's `setup()` in dependency order
    RunState     small and mutable: the loop's own counters
    StepResult   what one step hands back to the loop: metrics, samples, counts

Nothing between stages is a string-keyed dict: a step reads `components.engine`, never
`s["engine"]`, and a reader (or a type checker) sees every field here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # heavy imports only for the annotations
    from torch import Tensor, nn

    from rlkit.algorithms.losses import PolicyLoss
    from rlkit.algorithms.mixing import Mixer
    from rlkit.algorithms.token_weights import TokenWeighter
    from rlkit.data import Problem, Sampler
    from rlkit.diagnostics.alarms import AlarmMonitor
    from rlkit.rollout.engine import Prompt, RolloutEngine
    from rlkit.rollout.types import SamplingConfig
    from rlkit.trainer.canary import SyncCanary
    from rlkit.trainer.collect import RewardFunction
    from rlkit.trainer.deepspeed import Policy
    from rlkit.trainer.prefetch import RolloutPrefetcher
    from rlkit.trainer.update import ForwardSettings, ScaledRegularizer

__all__ = ["Components", "RunState", "Sample", "StepResult"]


@dataclass(frozen=True)
class Components:
    """Everything a training step uses. Built once; never reassigned during a run."""

    run_dir: Path
    accelerator: Any                          # accelerate.Accelerator
    policy: Policy                            # the DeepSpeed-wrapped model, optimizer, schedule
    loss_fn: PolicyLoss
    regularizers: tuple[ScaledRegularizer, ...]
    ref_model: nn.Module | None               # loaded only when loss_fn.needs_ref_model
    engine: RolloutEngine
    train_problems: list[Problem]
    eval_problems: list[Problem]
    sampler: Sampler                          # uniform or stateful (VADE); checkpointed
    reward_fns: tuple[RewardFunction, ...]    # the first one is the correctness reward (accuracy)
    monitor: AlarmMonitor                     # checkpointed
    forward: ForwardSettings
    sampling: SamplingConfig
    token_weighter: TokenWeighter | None = None  # per-token loss weights (token_weights: thr), or none
    teacher: nn.Module | None = None             # frozen teacher (model.teacher_model), for distillation terms
    mixer: Mixer | None = None                   # hpt / relift / paced (mixing:), checkpointed
    canary: SyncCanary | None = None             # the weight-sync canary (trainer.sync_canary)
    prefetcher: RolloutPrefetcher | None = None  # next step's rollouts during this one (rollout.async)


@dataclass
class RunState:
    """The loop's counters (the rest of the run's state lives in the checkpointed components)."""

    step: int = 0           # last completed step
    skip_streak: int = 0    # consecutive steps with a non-finite loss


@dataclass(frozen=True)
class Sample:
    """One logged completion (first row of each group)."""

    prompt: Prompt       # as the problem holds it: a user message, or a chat (list of messages)
    completion: str
    reward: float


@dataclass
class StepResult:
    """What one training step returns to the loop."""

    metrics: dict[str, float | Tensor]   # one key per quantity; turned into floats at logging
    nonfinite_skips: int                 # micro-batches skipped for a non-finite loss, all ranks
    samples: list[Sample] = field(default_factory=list)  # filled on logging.sample_every steps
    sync_max_abs_diff: float | None = None                # trainer.verify_sync: 0.0 = engine exact
    sync_drift: float | None = None                       # the canary's mismatch when it saw drift
    server_error: Exception | None = None                 # a rollout server lost after the update (sync)
