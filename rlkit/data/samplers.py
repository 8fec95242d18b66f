"""Prompt samplers: which training problems each step rolls out.

One registry, `SAMPLERS`, selected by `data.sampler.name` (params in `data.sampler.params`):

    uniform  shuffled epochs over the problems (`PromptSampler`): every problem once per epoch
    vade     VADE, variance-aware dynamic sampling (arXiv 2511.18902): a Beta posterior of each
             problem's success rate, Thompson draws, the k problems of highest p(1 - p)

One calling convention, whatever the sampler (the trainer never asks which one it holds):

    sampler = build_sampler(name, params, num_items=len(train_problems), seed=cfg.data.seed)
    idx = sampler.next_indices(k, step)                 # k problem indices for training step `step`
    sampler.update(idx, successes, trials, step)        # after scoring, per drawn problem
    sampler.state_dict() / sampler.load_state_dict(s)   # plain JSON types; restores exactly

Every rank of a data-parallel run holds the same sampler and makes the same calls with the same
(global) arguments, so all ranks draw the same indices and the state stays one checkpointable
object. The tensors here are small CPU float64 vectors, one entry per training problem.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from rlkit.data.datasets import PromptSampler
from rlkit.registry import Registry

__all__ = [
    "SAMPLERS",
    "Sampler",
    "UniformSampler",
    "VADESampler",
    "build_sampler",
    "register_sampler",
]


class Sampler:
    """Base class of prompt samplers; the methods below are the whole calling convention.

    Constructors take `(num_items, *, seed, **params)`; `num_items` and `seed` come from the data
    (never from `data.sampler.params`). A constructor refuses a bad param with a ValueError
    whose message starts with the param's name (`"global_decay: ..."`), so the config can report
    it at `data.sampler.params.<name>`.

    Declared (read by the config check, never probed):
      distinct_per_step: one `next_indices(k, step)` call returns k distinct problems, so the
        run needs at least `rollout.prompts_per_step` training problems.
    """

    sampler_name: ClassVar[str]
    distinct_per_step: ClassVar[bool] = False

    def next_indices(self, k: int, step: int) -> list[int]:
        """k problem indices to roll out at training step `step`."""
        raise NotImplementedError(f"{type(self).__name__} must implement next_indices(k, step)")

    def update(
        self,
        indices: Sequence[int] | Tensor,
        successes: Sequence[float] | Tensor,
        trials: Sequence[float] | Tensor,
        step: int,
    ) -> None:
        """Outcomes of step `step`: problem `indices[j]` had `successes[j]` of `trials[j]` rollouts
        right. A sampler whose draws do not depend on outcomes keeps this no-op."""
        return None

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} must implement state_dict()")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement load_state_dict(state)")


SAMPLERS: Registry[type[Sampler]] = Registry(
    "sampler", base=Sampler, name_attr="sampler_name", fixed=("num_items", "seed")
)


def register_sampler(name: str):
    """Class decorator: make a Sampler subclass selectable by `name` in `data.sampler.name`."""
    return SAMPLERS.register(name)


def build_sampler(name_or_path: str, params: dict[str, Any], *, num_items: int, seed: int) -> Sampler:
    """The sampler `name_or_path` over `num_items` problems; unknown names or params raise with the choices."""
    return SAMPLERS.bind(name_or_path, params, path="data.sampler.params")(num_items, seed=seed)


# ----------------------------------------------------------------------------- uniform


@register_sampler("uniform")
class UniformSampler(Sampler):
    """Shuffled epochs (`PromptSampler`, unchanged) behind the sampler calling convention.

    Draws do not depend on outcomes or on `step`: `update` does nothing, and the state is
    `PromptSampler`'s own, so checkpoints written before samplers were selectable still load.
    """

    def __init__(self, num_items: int, *, seed: int) -> None:
        self._epochs = PromptSampler(num_items, seed=seed)

    def next_indices(self, k: int, step: int) -> list[int]:
        return self._epochs.next_indices(k)

    def state_dict(self) -> dict[str, Any]:
        return self._epochs.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "name" in state:  # only other samplers' states carry a name
            raise ValueError(
                f"checkpoint sampler state is a '{state['name']}' sampler's, this run uses 'uniform': "
                "data.sampler changed since the checkpoint"
            )
        self._epochs.load_state_dict(state)


# ----------------------------------------------------------------------------- VADE


def _decay(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ValueError(f"{name}: must be a number in (0, 1] (1 = no decay), got {value!r}")
    return float(value)


def _prior(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (0 < value < math.inf):
        raise ValueError(f"{name}: must be a finite number > 0 (a Beta prior pseudo-count), got {value!r}")
    return float(value)


def _stream_seed(seed: int, step: int) -> int:
    """A 63-bit generator seed from (seed, step) alone; distinct pairs give unrelated streams
    (a hash, not `seed * C + step`, whose pairs collide)."""
    digest = hashlib.blake2b(f"vade:{seed}:{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@register_sampler("vade")
class VADESampler(Sampler):
    """VADE: variance-aware dynamic sampling with Beta posteriors and Thompson draws.

    Paper: "VADE", arXiv 2511.18902. From its abstract: per-problem Beta posteriors of the
    success rate, a Thompson sampler driven by an information-gain objective, a two-scale prior
    decay for the non-stationary policy, selection before rollout with no extra rollouts. The
    paper's formulas and hyperparameters were not available, so everything below (the update,
    the score, both decay rules, the defaults) is rlkit's interpretation, not the paper's text.

    Posterior: problem i starts at the prior Beta(a0, b0) (`prior_alpha`, `prior_beta`; 1, 1 =
    uniform). n rollouts with k successes add a_i += k, b_i += n - k.

    Selection at step t (`next_indices(k, t)`): draw p~_i ~ Beta(a_i(t), b_i(t)) for every
    problem from a torch.Generator seeded by (seed, t) alone, score p~_i (1 - p~_i) (the
    variance of a Bernoulli reward with that success rate: the expected spread of a group's
    rewards, hence of its advantages), take the k highest; ties go to the lower index.
    Unvisited problems (Beta(1, 1)) keep a fair chance: their draws are spread over [0, 1].

    Decay, exactly. Stored per problem: (alpha_i, beta_i) and s_i, the step of its last update
    (0 before any). The posterior read at step t is

        a_i(t) = a0 + λ_g^(t - s_i) · (alpha_i - a0),    b_i(t) = b0 + λ_g^(t - s_i) · (beta_i - b0)

    i.e. every problem's pseudo-counts above the prior shrink by the global factor λ_g
    (`global_decay`) once per step, whether or not it is drawn. An update at step t first folds
    both decays into the stored counts, then adds the new evidence:

        alpha_i <- a0 + (λ_g · λ_s)^Δt_i · (alpha_i - a0) + k,   Δt_i = t - s_i
        beta_i  <- b0 + (λ_g · λ_s)^Δt_i · (beta_i - b0) + n - k,   s_i <- t

    So the per-problem factor λ_s^Δt_i (`sample_decay`) acts once, when the problem is next
    updated: the longer it went unvisited, the less its old evidence (gathered under an older
    policy) weighs against the fresh rollouts. It is not applied on reads: `next_indices` reads
    every problem every step, so a factor applied there would be the global one again. A
    problem listed twice in one update decays once and gets both counts. λ = 1 turns a decay
    off. Applying λ_g eagerly to every problem at each step would give the same numbers up to
    rounding; the lazy form makes every read a pure function of the stored state, so a resumed
    run and every rank compute the same posteriors bit for bit. Steps must not go backwards.

    Repeated calls at one step (DAPO dynamic sampling draws again within a step) continue down
    the same ranking: each returns the best k problems not yet returned at that step; when
    fewer than k are left, the exclusion starts over.

    Defaults (untuned, rlkit's choice): prior (1, 1); λ_g = 0.99 (evidence half-life ≈ 69
    steps); λ_s = 0.95 (a revisit after ≈ 14 steps halves the old evidence once more).
    """

    distinct_per_step = True

    def __init__(
        self,
        num_items: int,
        *,
        seed: int,
        prior_alpha: float = 1.0,
        prior_beta: float = 1.0,
        global_decay: float = 0.99,
        sample_decay: float = 0.95,
    ) -> None:
        if num_items <= 0:
            raise ValueError(f"num_items: VADE needs at least one training problem, got {num_items}")
        self.prior_alpha, self.prior_beta = _prior("prior_alpha", prior_alpha), _prior("prior_beta", prior_beta)
        self.global_decay = _decay("global_decay", global_decay)
        self.sample_decay = _decay("sample_decay", sample_decay)
        self.num_items, self.seed = num_items, seed
        self.alpha = torch.full((num_items,), self.prior_alpha, dtype=torch.float64)  # [N] as of last_update
        self.beta = torch.full((num_items,), self.prior_beta, dtype=torch.float64)    # [N]
        self.last_update = torch.zeros(num_items, dtype=torch.long)                   # [N] s_i
        self._drawn_step = -1          # the step of the latest next_indices call
        self._drawn: list[int] = []    # indices returned so far at _drawn_step

    # ------------------------------------------------------------------ reads

    def _check_step(self, step: int) -> None:
        latest = int(self.last_update.max())
        if step < latest:
            raise ValueError(f"step {step} is before the last update (step {latest}); steps must not go backwards")

    def posterior(self, step: int) -> tuple[Tensor, Tensor]:
        """(a(t), b(t)) read at step t = `step`, both [N]: the global decay applied since each s_i."""
        self._check_step(step)
        keep = self.global_decay ** (step - self.last_update).to(torch.float64)  # [N] λ_g^(t - s_i)
        return (self.prior_alpha + keep * (self.alpha - self.prior_alpha),
                self.prior_beta + keep * (self.beta - self.prior_beta))

    def thompson_draws(self, step: int) -> Tensor:
        """p~ ~ Beta(a(t), b(t)) for every problem, [N]; a function of the state and (seed, step) alone."""
        a, b = self.posterior(step)
        gen = torch.Generator().manual_seed(_stream_seed(self.seed, step))
        # torch.distributions.Beta samples exactly this way (the first coordinate of a
        # Dirichlet(a, b) draw) but takes no generator; the private op does.
        return torch._sample_dirichlet(torch.stack([a, b], dim=1), generator=gen)[:, 0]  # [N]

    def next_indices(self, k: int, step: int) -> list[int]:
        if not 0 < k <= self.num_items:
            raise ValueError(
                f"k: VADE picks k distinct problems per call, so k must be in [1, num_items = "
                f"{self.num_items}], got {k}; set data.num_train >= rollout.prompts_per_step"
            )
        p = self.thompson_draws(step)  # [N]
        score = p * (1 - p)  # [N], in [0, 1/4]
        if step != self._drawn_step:
            self._drawn_step, self._drawn = step, []
        if self.num_items - len(self._drawn) < k:
            self._drawn = []
        if self._drawn:
            score[self._drawn] = -1.0  # already returned at this step: below every real score
        order = torch.sort(score, descending=True, stable=True).indices  # stable: ties by index
        chosen = order[:k].tolist()
        self._drawn += chosen
        return chosen

    # ------------------------------------------------------------------ writes

    def update(
        self,
        indices: Sequence[int] | Tensor,
        successes: Sequence[float] | Tensor,
        trials: Sequence[float] | Tensor,
        step: int,
    ) -> None:
        """Add the outcomes of step `step` (see the class docstring for the decay folded in first).

        successes[j] of trials[j] rollouts of problem indices[j] were right; counts may be
        fractional (e.g. G times a mean reward in [0, 1]) but need 0 <= successes <= trials.
        """
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)         # [M]
        wins = torch.as_tensor(successes, dtype=torch.float64).reshape(-1)   # [M]
        n = torch.as_tensor(trials, dtype=torch.float64).reshape(-1)         # [M]
        if not idx.numel() == wins.numel() == n.numel():
            raise ValueError(
                f"indices, successes, trials: need one entry per problem, got {idx.numel()}, "
                f"{wins.numel()}, {n.numel()}"
            )
        if idx.numel() and not (0 <= int(idx.min()) and int(idx.max()) < self.num_items):
            raise ValueError(f"indices: must be in [0, {self.num_items}), got {idx.tolist()}")
        if not bool(((wins >= 0) & (wins <= n)).all()):
            raise ValueError(f"successes: need 0 <= successes <= trials, got {wins.tolist()} of {n.tolist()}")
        self._check_step(step)
        seen = torch.unique(idx)  # [U]: a problem listed twice decays once
        keep = (self.global_decay * self.sample_decay) ** (step - self.last_update[seen]).to(torch.float64)  # [U]
        self.alpha[seen] = self.prior_alpha + keep * (self.alpha[seen] - self.prior_alpha)
        self.beta[seen] = self.prior_beta + keep * (self.beta[seen] - self.prior_beta)
        self.alpha.index_add_(0, idx, wins)
        self.beta.index_add_(0, idx, n - wins)
        self.last_update[seen] = step

    # ------------------------------------------------------------------ checkpoint

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON types (float64 values survive json exactly) for trainer_state.json."""
        return {
            "name": "vade", "num_items": self.num_items, "seed": self.seed,
            "prior_alpha": self.prior_alpha, "prior_beta": self.prior_beta,
            "alpha": self.alpha.tolist(), "beta": self.beta.tolist(), "last_update": self.last_update.tolist(),
            "drawn_step": self._drawn_step, "drawn": list(self._drawn),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != "vade":
            raise ValueError(
                f"checkpoint sampler state is a '{state.get('name', 'uniform')}' sampler's, this run uses "
                "'vade': data.sampler changed since the checkpoint"
            )
        if state["num_items"] != self.num_items or state["seed"] != self.seed:
            raise ValueError(
                f"checkpoint sampler was built for {state['num_items']} items / seed {state['seed']}, "
                f"this run has {self.num_items} / {self.seed}: the data config changed since the checkpoint"
            )
        if (state["prior_alpha"], state["prior_beta"]) != (self.prior_alpha, self.prior_beta):
            raise ValueError(
                f"checkpoint posteriors start from the prior ({state['prior_alpha']}, {state['prior_beta']}), "
                f"this run's is ({self.prior_alpha}, {self.prior_beta}): data.sampler.params.prior_alpha / "
                "prior_beta changed since the checkpoint"
            )
        self.alpha = torch.tensor(state["alpha"], dtype=torch.float64)
        self.beta = torch.tensor(state["beta"], dtype=torch.float64)
        self.last_update = torch.tensor(state["last_update"], dtype=torch.long)
        self._drawn_step, self._drawn = state["drawn_step"], list(state["drawn"])
