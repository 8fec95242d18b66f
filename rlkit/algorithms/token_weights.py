"""Token-level weights and features, computed once per rollout batch from an old-policy pass.

    old-policy token pass (rlkit/trainer/token_pass.py): per-token logprobs, entropy and, on
    request, a per-token statistic of the final hidden states, group by group
      -> a token-weight function (this module's registry, `token_weights:` in YAML)
      -> TokenFeatures: token_weights [N, T] and/or entropy_score [N, T]
      -> LossInputs, sliced per micro-batch by the trainer

Two methods live here (formulas, sources and departures: docs/algorithms.md):
- Token Hidden Reward (THR; Deng et al., arXiv 2510.03669): the influence of each token on
  the likelihood of its group's correct responses through the shared hidden-state /
  unembedding geometry, and sign-based reweighting (`thr_token_weights`).
- HAPO's entropy signal (arXiv 2509.16591): per-token entropy mapped to a score in [-1, 1]
  (`entropy_score`), read by the `hapo` loss (rlkit/algorithms/losses.py).

Math is in pure functions; the `THR` class only holds settings and plugs them together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from rlkit.registry import Registry

__all__ = [
    "THR",
    "THR_MODES",
    "TOKEN_WEIGHTS",
    "GroupChunk",
    "TokenFeatures",
    "TokenWeightInputs",
    "TokenWeighter",
    "available_token_weights",
    "build_token_weighter",
    "entropy_score",
    "group_vocab",
    "register_token_weights",
    "thr_accumulate",
    "thr_influence",
    "thr_prediction_error",
    "thr_scores",
    "thr_state",
    "thr_token_weights",
]

Metrics = dict[str, Tensor]


# ---------------------------------------------------------------------------------------
# HAPO's entropy signal


def _nearest_quantile(x: Tensor, q: float) -> Tensor:
    """The q-quantile of a 1-D tensor with "nearest" interpolation: the sorted value at index
    round(q * (n - 1)) (Python's round, half to even, as the HAPO release's quantile)."""
    k = round(q * (x.numel() - 1))
    return torch.sort(x).values[k]


def entropy_score(
    entropy: Tensor, mask: Tensor, *, pivot: float = 0.8, released_sign: bool = False, eps: float = 1e-8
) -> Tensor:
    """HAPO's normalised token entropy ĥ [N, T] (arXiv 2509.16591, `compute_entropy_h` in the
    authors' repository starriver030515/HAPO).

    Over the valid tokens: l = ln max(H, eps); m = the `pivot`-quantile of l ("nearest");
    sigma = sqrt(mean((l - m)^2)); h = (l - m) / sigma. Then ĥ = h / max(h) where h > 0 and
    ĥ = h / |min(h)| where h < 0, so ĥ is in [-1, 1]: +1 for the highest-entropy token, -1 for
    the lowest, 0 at the pivot.

    released_sign=True reproduces the released code, which divides the negative side by
    min(h) itself (a negative number), so low-entropy tokens score *positive* (the lowest gets
    +1) and every token looks like a high-entropy one. The paper's text describes the
    [-1, 1] mapping, which is the default here. 0 on padding; all 0 when no token is valid.
    """
    if not 0.0 < pivot < 1.0:
        raise ValueError(f"entropy pivot must be in (0, 1), got {pivot}")
    out = torch.zeros(entropy.shape, dtype=torch.float32, device=entropy.device)
    if not mask.any():
        return out
    ell = torch.log(entropy.float().clamp(min=eps))  # [N, T]
    m = _nearest_quantile(ell[mask], pivot)
    sigma = (ell[mask] - m).square().mean().sqrt().clamp(min=eps)
    h = torch.where(mask, (ell - m) / sigma, 0.0)  # [N, T]
    pos_max = torch.where(mask & (h > 0), h, 0.0).amax().clamp(min=eps)
    neg_min = torch.where(mask & (h < 0), h, 0.0).amin().clamp(max=-eps)  # < 0
    neg_scale = 1.0 / neg_min if released_sign else 1.0 / neg_min.abs()
    out = torch.where(h > 0, h / pos_max, h * neg_scale)
    return torch.where(mask, out, 0.0)


# ---------------------------------------------------------------------------------------
# Token Hidden Reward: influence scores


def thr_prediction_error(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, logprobs: Tensor, vocab: Tensor,
    *, temperature: float,
) -> Tensor:
    """g = e_y - π(·|ctx) restricted to the group's vocabulary V* (no renormalisation), fp32.

    hidden [M, H], targets [M] (each in `vocab`), logprobs [M] (log π(y) at `temperature`,
    from the chunked pass), vocab [U] sorted token ids -> g [M, U]. Only the U columns are
    projected: the softmax normaliser comes from the known logprob, log Z = z_y - log π(y),
    so no [M, V] tensor is formed.
    """
    w = weight[vocab].float()  # [U, H]
    z = hidden.float() @ w.t()  # [M, U]
    if bias is not None:
        z = z + bias[vocab].float()
    z = z / temperature
    col = torch.searchsorted(vocab, targets)  # [M] column of each target in V*
    log_z = z.gather(1, col[:, None]) - logprobs.float()[:, None]  # [M, 1]
    g = -(z - log_z).exp()  # [M, U]  -π restricted to V*
    g.scatter_add_(1, col[:, None], torch.ones_like(log_z))  # + e_y
    return g


def thr_accumulate(hidden: Tensor, g: Tensor) -> Tensor:
    """M+ = sum over tokens of g h^T: [U, H] fp32 (call on the correct responses' tokens)."""
    return g.t() @ hidden.float()


def thr_scores(hidden: Tensor, g: Tensor, m_plus: Tensor) -> Tensor:
    """s = g^T M+ h per token [M]: sum over the correct tokens (j, k') of
    <g_jk', g> <h_jk', h>, the first-order change of the correct responses' log-likelihood
    when this token's logprob is pushed up (NTHR's influence, arXiv 2505.18830)."""
    return ((hidden.float() @ m_plus.t()) * g).sum(-1)


@dataclass
class GroupChunk:
    """Rows of one group from the old-policy pass, what a hidden-state statistic reads.

    hidden [n, T, H], targets / logprobs [n, T], mask [n, T] bool, correct [n] bool; the
    output projection (weight [V, H], bias) and the sampling temperature; vocab [U] the sorted
    token ids the whole group used (V*, fixed before the pass so split groups agree)."""

    hidden: Tensor
    targets: Tensor
    logprobs: Tensor
    mask: Tensor
    correct: Tensor
    weight: Tensor
    bias: Tensor | None
    temperature: float
    vocab: Tensor
    chunk_size: int = 1024

    def tokens(self, rows: Tensor | None = None):
        """Yield (hidden [m, H], g [m, U], flat index [m]) for the valid tokens of `rows`
        (default: all), chunk_size tokens at a time: peak memory O(chunk_size * U)."""
        sel = self.mask if rows is None else self.mask & rows[:, None]
        flat = sel.flatten().nonzero().flatten()  # [M]
        h2 = self.hidden.flatten(0, 1)
        for s in range(0, flat.numel(), self.chunk_size):
            idx = flat[s: s + self.chunk_size]
            h = h2[idx]
            g = thr_prediction_error(h, self.weight, self.bias, self.targets.flatten()[idx],
                                     self.logprobs.flatten()[idx], self.vocab, temperature=self.temperature)
            yield h, g, idx


def group_vocab(targets: Tensor, mask: Tensor) -> Tensor:
    """V*: the sorted distinct token ids of a group's valid completion tokens [U]."""
    return torch.unique(targets[mask])


def thr_state(chunk: GroupChunk) -> Tensor:
    """M+ [U, H] over the correct rows of `chunk` (additive: a split group sums its parts)."""
    m_plus = torch.zeros(chunk.vocab.numel(), chunk.hidden.shape[-1], dtype=torch.float32,
                         device=chunk.hidden.device)
    for h, g, _ in chunk.tokens(chunk.correct):
        m_plus += thr_accumulate(h, g)
    return m_plus


def thr_influence(chunk: GroupChunk) -> Tensor:
    """Influence scores s [n, T] fp32 of one group held whole in `chunk` (0 on padding; all 0
    when the group has no correct response). Cost O(tokens * U * H)."""
    return score_rows(chunk, thr_state(chunk))


def score_rows(chunk: GroupChunk, m_plus: Tensor) -> Tensor:
    """s [n, T] for every row of `chunk` against an accumulated M+ [U, H]."""
    out = torch.zeros(chunk.mask.numel(), dtype=torch.float32, device=chunk.hidden.device)
    for h, g, idx in chunk.tokens():
        out[idx] = thr_scores(h, g, m_plus)
    return out.view(chunk.mask.shape)


# ---------------------------------------------------------------------------------------
# Token Hidden Reward: weights

THR_MODES = ("reweight", "only")


def thr_token_weights(
    scores: Tensor,
    advantages: Tensor,
    correct: Tensor,
    group_ids: Tensor,
    mask: Tensor,
    *,
    p: float = 0.5,
    mode: str = "reweight",
    gate_beta: float | None = None,
) -> tuple[Tensor, Metrics]:
    """THR token weights [N, T] from influence scores (INTERP, see docs/algorithms.md).

    THR_ik = Â_i * s_ik: the sign of the update on the token times its alignment with the
    group's correct responses. The gate (optional in "reweight", on in "only", default
    gate_beta 1) keeps tokens with |s_ik| > tau_g, tau_g = gate_beta * min over the group's
    correct rows of the row-mean of s (NTHR's threshold, arXiv 2505.18830).
      reweight: w = 1 + p * sign(THR) on gated tokens, 1 elsewhere. p > 0 amplifies tokens
                that raise the correct responses' likelihood (exploitation), p < 0 the others.
      only:     w = 1 on gated tokens, 0 elsewhere (train only on high-influence tokens).
    A group without a correct response gets w = 1 (no influence is defined). Advantages
    [N] (or [N, T]; the sign per token is read). Metrics: thr/pos_frac (share of valid tokens
    in groups with a correct response whose THR > 0), thr/weight_mean, thr/gated_frac.
    """
    if mode not in THR_MODES:
        raise ValueError(f"unknown THR mode {mode!r}; choose one of {', '.join(THR_MODES)}")
    if not -1.0 < p < 1.0:
        raise ValueError(f"THR p must be in (-1, 1) so that weights 1 + p*sign stay positive, got {p}")
    if mode == "only" and gate_beta is None:
        gate_beta = 1.0
    s = scores.float()
    adv = advantages.float() if advantages.dim() == 2 else advantages.float()[:, None].expand_as(s)
    thr = adv * s  # [N, T]
    _, inv = torch.unique(group_ids, return_inverse=True)  # [N]
    num = int(inv.max()) + 1 if inv.numel() else 0
    has_correct = torch.zeros(num, dtype=torch.bool, device=s.device).index_fill_(0, inv[correct.bool()], True)[inv]  # [N]
    valid = mask & has_correct[:, None]  # [N, T] tokens THR applies to
    if gate_beta is None:
        gated = valid
    else:
        row_mean = torch.where(mask, s, 0.0).sum(-1) / mask.sum(-1).clamp(min=1)  # [N]
        cand = torch.where(correct.bool(), row_mean, torch.inf)
        tau = torch.full((num,), torch.inf, device=s.device).scatter_reduce(0, inv, cand, "amin")  # [B]
        gated = valid & (s.abs() > gate_beta * tau[inv][:, None])
    sign = torch.sign(thr)
    if mode == "reweight":
        w = torch.where(gated, 1.0 + p * sign, 1.0)
    else:
        w = torch.where(gated | ~valid, 1.0, 0.0)
    w = torch.where(mask, w, 0.0)
    denom = valid.sum().clamp(min=1)
    metrics = {
        "thr/pos_frac": ((thr > 0) & valid).sum() / denom,
        "thr/weight_mean": w.sum() / mask.sum().clamp(min=1),
        "thr/gated_frac": (gated.sum() / denom),
    }
    return w, {k: v.float() for k, v in metrics.items()}


# ---------------------------------------------------------------------------------------
# the registry of token-weight functions


@dataclass
class TokenWeightInputs:
    """What a token-weight function reads, once per batch (N rows, T tokens)."""

    mask: Tensor                 # [N, T] bool
    advantages: Tensor           # [N] or [N, T]
    rewards: Tensor              # [N]
    correct: Tensor              # [N] bool, the first reward function scored >= 1
    group_ids: Tensor            # [N]
    entropy: Tensor              # [N, T] old-policy entropy at the sampling temperature
    scores: Tensor | None = None  # [N, T] the hidden-state statistic, for weighters that declare needs_hidden


@dataclass
class TokenFeatures:
    """What the loss and regularizers receive, computed once per batch ([N, T] or [N], or None),
    sliced per micro-batch by the trainer, and their metrics."""

    token_weights: Tensor | None = None      # [N, T] multiplies the per-token policy loss (THR)
    entropy_score: Tensor | None = None      # [N, T] HAPO's normalised old-policy entropy
    teacher_logprobs: Tensor | None = None   # [N, T] a frozen teacher's logprobs (KDRL)
    kd_weights: Tensor | None = None         # [N] per-row weights of a distillation term (KDRL mask x PACED)
    metrics: Metrics = field(default_factory=dict)


class TokenWeighter:
    """Base class of a token-weight function: `__call__(TokenWeightInputs) -> TokenFeatures`.

    Declared needs, read by the trainer (never probed):
      needs_hidden: the token pass computes a per-group statistic of the hidden states
        (`group_state` accumulated over a group's rows, then `group_scores`) into
        `TokenWeightInputs.scores`.
      needs_group: compares rows within a group (the config requires rollout.group_size >= 2).
    """

    name: str = ""
    needs_hidden: ClassVar[bool] = False
    needs_group: ClassVar[bool] = False

    def __call__(self, inputs: TokenWeightInputs) -> TokenFeatures:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(inputs)")

    def group_state(self, chunk: GroupChunk) -> Tensor:
        """An additive per-group state from some rows of the group (split groups sum it)."""
        raise NotImplementedError

    def group_scores(self, chunk: GroupChunk, state: Tensor) -> Tensor:
        """Per-token statistic [n, T] of the chunk's rows given the group's whole state."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


TOKEN_WEIGHTS: Registry[type[TokenWeighter]] = Registry("token weights", base=TokenWeighter, name_attr="name")


def register_token_weights(name: str):
    """Class decorator: make a TokenWeighter subclass selectable by `token_weights.name`."""
    return TOKEN_WEIGHTS.register(name)


def available_token_weights() -> list[str]:
    return TOKEN_WEIGHTS.names()


def build_token_weighter(name_or_path: str, **params) -> TokenWeighter:
    """A token-weight function with its params; unknown names or params raise with the choices."""
    return TOKEN_WEIGHTS.bind(name_or_path, params)()


@register_token_weights("thr")
class THR(TokenWeighter):
    """Token Hidden Reward reweighting (arXiv 2510.03669): see `thr_token_weights`.

    p: sign-based coefficient in (-1, 1); > 0 favours exploitation (greedy accuracy), < 0
      exploration (pass@k). The paper tunes it per model; rlkit's default 0.5 is a choice.
    mode: "reweight" | "only". gate_beta: None (reweight every token) or the NTHR threshold
      multiplier (1.0 in "only" mode when unset).
    """

    needs_hidden = True
    needs_group = True

    def __init__(self, *, p: float = 0.5, mode: str = "reweight", gate_beta: float | None = None) -> None:
        if mode not in THR_MODES:
            raise ValueError(f"mode: unknown THR mode {mode!r}; choose one of {', '.join(THR_MODES)}")
        if not -1.0 < p < 1.0:
            raise ValueError(f"p: must be in (-1, 1), got {p} (with |p| >= 1 the weight 1 + p*sign(THR) "
                             "can be zero or negative, which flips the update)")
        if gate_beta is not None and gate_beta < 0:
            raise ValueError(f"gate_beta: must be >= 0 or null, got {gate_beta}")
        self.p, self.mode, self.gate_beta = p, mode, gate_beta

    def group_state(self, chunk: GroupChunk) -> Tensor:
        return thr_state(chunk)

    def group_scores(self, chunk: GroupChunk, state: Tensor) -> Tensor:
        return score_rows(chunk, state)

    def __call__(self, inputs: TokenWeightInputs) -> TokenFeatures:
        if inputs.scores is None:
            raise ValueError("THR needs the token pass's influence scores (TokenWeightInputs.scores)")
        w, metrics = thr_token_weights(inputs.scores, inputs.advantages, inputs.correct, inputs.group_ids,
                                       inputs.mask, p=self.p, mode=self.mode, gate_beta=self.gate_beta)
        return TokenFeatures(token_weights=w, metrics=metrics)
