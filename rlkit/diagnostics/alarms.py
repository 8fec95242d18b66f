"""Alarms: detectors over the logged metric stream that say why a run is not learning.

`AlarmMonitor.update(step, metrics)` takes the plain-float record of one step (the same
numbers written to metrics.jsonl) and returns the alarms that fire at this step. Detectors
(rules, defaults and their justification: docs/diagnostics.md):

- `entropy_collapse`: entropy below `entropy_collapse_frac` of its initial value, or
  falling every step and projected to get there within `window` steps, while reward
  plateaus (Cui et al., arXiv 2505.22617).
- `zero_adv_saturation`: the window mean of `diag/zero_adv_frac` above `zero_adv_frac`
  (DAPO dynamic sampling, arXiv 2503.14476).
- `lld_stagnation`, `lld_decay`, `lld_collapse`: the three phases of lazy likelihood
  displacement of positive responses (LLDS, arXiv 2512.04220). The paper names the phases
  but gives no detection rule; the rules in `_check_lld` are rlkit's.
- `grad_spike`: ZClip z-score of the gradient norm (arXiv 2504.02507).

`entropy_collapse` and `lld_stagnation` stay quiet once the run has converged (`_converged`):
both describe a symptom (low entropy, positive responses gaining no likelihood) that is the
expected end state of a policy that answers nearly everything right.

Firing: an alarm name fires once, then stays silent while its condition holds; it re-arms
after its condition has been false on `window` consecutive evaluated steps, and can then fire
again. Missing or NaN metrics are skipped: a detector is evaluated only at steps where its
primary metric is present, and the history it keeps is of present values only. 0 is a value,
not a missing one (a gradient norm of exactly 0 is a step without gradient).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

__all__ = ["ALARM_NAMES", "Alarm", "AlarmMonitor", "fitted_rise"]

ALARM_NAMES = (
    "entropy_collapse",
    "zero_adv_saturation",
    "lld_stagnation",
    "lld_decay",
    "lld_collapse",
    "grad_spike",
)

# metric key -> short history name. Reward falls back to rollout/accuracy when absent.
_KEYS = {
    "policy/entropy": "entropy",
    "reward/mean": "reward",
    "diag/zero_adv_frac": "zero_adv",
    "diag/zero_adv_all_correct_frac": "all_correct",
    "diag/zero_adv_all_wrong_frac": "all_wrong",
    "diag/logp_delta_pos": "lpos",
    "diag/logp_delta_neg": "lneg",
    "rollout/accuracy": "accuracy",
}
_STATE_VERSION = 1
# The ZClip sigma is floored at this fraction of the running mean. A norm within a few
# percent of its mean is no spike, and with sigma = 0 (identical warmup norms) every later
# rise would have an enormous z (excess / 1e-6) while the clipped value mu + thr^2·sigma/z equals mu, so the
# baseline could never move again.
_GRAD_MIN_REL_STD = 0.01


@dataclass
class Alarm:
    """One alarm event, as written to alarms.jsonl."""

    name: str
    step: int
    message: str  # plain language: what is happening and why it matters
    action: str  # what to try
    value: float  # the number the rule compared (see docs/diagnostics.md per alarm)

    def to_dict(self) -> dict:
        return asdict(self)


class _Finding(NamedTuple):
    active: bool
    value: float
    message: str
    action: str


def fitted_rise(ys: list[float]) -> float:
    """Least-squares slope of ys over 0..n-1, times (n - 1): the fitted change across ys."""
    n = len(ys)
    if n < 2:
        return 0.0
    x_mean = (n - 1) / 2
    y_mean = sum(ys) / n
    sxy = sum((i - x_mean) * (y - y_mean) for i, y in enumerate(ys))
    sxx = sum((i - x_mean) ** 2 for i in range(n))
    return sxy / sxx * (n - 1)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


class AlarmMonitor:
    """Stateful detectors over per-step floats; `state_dict` round-trips through JSON.

    Args (defaults justified in docs/diagnostics.md):
        entropy_collapse_frac: collapse level as a fraction of the initial entropy
            (mean of the first `window` steps).
        zero_adv_frac: window-mean fraction of zero-variance groups that counts as saturated.
        grad_z_threshold: ZClip z-score above which a gradient norm is a spike.
        window: steps used by every windowed rule (initial entropy, slopes, means, re-arm).
        warmup: gradient-norm steps that initialise the ZClip mean/variance (ZClip: 25).
        reward_rise_tol: fitted reward change over the window above which reward "rises";
            at or below it reward "plateaus" (reward units; 0.05 = 5 points of accuracy).
        converged_frac: share of the starting accuracy headroom (1 - A0, A0 = mean
            `rollout/accuracy` of the first `window` steps) that the window-mean accuracy has
            closed, at or above which the run counts as converged: low entropy is then
            convergence, not collapse, and positive responses have no likelihood left to
            gain, so `entropy_collapse` and `lld_stagnation` stay quiet.
        lld_tol: |Δ logprob| per token (nats) treated as zero by the LLD rules.
        lld_accel: ratio of late-window to early-window decrease that counts as accelerating.
        zclip_alpha: EMA factor of the gradient-norm mean/variance (ZClip: 0.97).
    """

    def __init__(
        self,
        *,
        entropy_collapse_frac: float = 0.3,
        zero_adv_frac: float = 0.9,
        grad_z_threshold: float = 2.5,
        window: int = 5,
        warmup: int = 25,
        reward_rise_tol: float = 0.05,
        converged_frac: float = 0.75,
        lld_tol: float = 1e-4,
        lld_accel: float = 2.0,
        zclip_alpha: float = 0.97,
    ) -> None:
        if window < 1 or warmup < 1:
            raise ValueError(
                f"window and warmup must be >= 1, got window={window}, warmup={warmup}"
            )
        if not 0 < entropy_collapse_frac < 1:
            raise ValueError(
                f"entropy_collapse_frac must be in (0, 1), got {entropy_collapse_frac}"
            )
        self.entropy_collapse_frac = entropy_collapse_frac
        self.zero_adv_frac = zero_adv_frac
        self.grad_z_threshold = grad_z_threshold
        self.window = window
        self.warmup = warmup
        self.reward_rise_tol = reward_rise_tol
        self.converged_frac = converged_frac
        self.lld_tol = lld_tol
        self.lld_accel = lld_accel
        self.zclip_alpha = zclip_alpha
        self._hist: dict[str, list[float]] = {name: [] for name in _KEYS.values()}
        self._entropy_init: list[float] = []  # first `window` entropy values
        self._entropy_h0: float | None = None
        self._acc_init: list[float] = []  # first `window` accuracy values
        self._zclip: dict = {"buffer": [], "mean": None, "var": None}
        self._active: dict[str, bool] = {name: False for name in ALARM_NAMES}
        self._clear_streak: dict[str, int] = {name: 0 for name in ALARM_NAMES}

    # ---- public API -------------------------------------------------------------------
    def update(self, step: int, metrics: dict[str, float]) -> list[Alarm]:
        """Feed one step's floats; return the alarms that fire at this step."""
        vals = {_KEYS[k]: float(v) for k, v in metrics.items() if k in _KEYS and _is_num(v)}
        if "reward" not in vals and _is_num(metrics.get("rollout/accuracy")):
            vals["reward"] = float(metrics["rollout/accuracy"])
        if "accuracy" in vals and len(self._acc_init) < self.window:
            self._acc_init.append(vals["accuracy"])
        for name, v in vals.items():
            hist = self._hist[name]
            hist.append(v)
            del hist[: -self.window]
        findings: dict[str, _Finding | None] = {}
        if "entropy" in vals:
            findings["entropy_collapse"] = self._check_entropy(vals["entropy"])
        if "zero_adv" in vals:
            findings["zero_adv_saturation"] = self._check_zero_adv()
        if "lpos" in vals:
            findings.update(self._check_lld())
        grad = metrics.get("train/grad_norm")
        if _is_num(grad):
            findings["grad_spike"] = self._check_grad(float(grad))
        alarms = []
        for name, finding in findings.items():
            if finding is not None and self._transition(name, finding.active):
                alarms.append(
                    Alarm(name, int(step), finding.message, finding.action, finding.value)
                )
        return alarms

    def state_dict(self) -> dict:
        """Everything `update` depends on, as JSON-serialisable builtins."""
        return {
            "version": _STATE_VERSION,
            "hist": {k: list(v) for k, v in self._hist.items()},
            "entropy_init": list(self._entropy_init),
            "entropy_h0": self._entropy_h0,
            "acc_init": list(self._acc_init),
            "zclip": {**self._zclip, "buffer": list(self._zclip["buffer"])},
            "active": dict(self._active),
            "clear_streak": dict(self._clear_streak),
        }

    def load_state_dict(self, s: dict) -> None:
        if s.get("version") != _STATE_VERSION:
            raise ValueError(
                f"AlarmMonitor state version {s.get('version')!r}, expected {_STATE_VERSION}"
            )
        self._hist = {k: list(s["hist"].get(k, [])) for k in _KEYS.values()}
        self._entropy_init = list(s["entropy_init"])
        self._entropy_h0 = s["entropy_h0"]
        self._acc_init = list(s.get("acc_init", []))
        self._zclip = {**s["zclip"], "buffer": list(s["zclip"]["buffer"])}
        self._active = {n: bool(s["active"].get(n, False)) for n in ALARM_NAMES}
        self._clear_streak = {n: int(s["clear_streak"].get(n, 0)) for n in ALARM_NAMES}

    # ---- firing ------------------------------------------------------------------------
    def _transition(self, name: str, condition: bool) -> bool:
        """Fire-once bookkeeping; True when `name` fires now."""
        if condition:
            self._clear_streak[name] = 0
            if not self._active[name]:
                self._active[name] = True
                return True
            return False
        if self._active[name]:
            self._clear_streak[name] += 1
            if self._clear_streak[name] >= self.window:
                self._active[name] = False  # re-armed
                self._clear_streak[name] = 0
        return False

    # ---- detectors --------------------------------------------------------------------
    def _reward_rise(self) -> float | None:
        """Fitted reward change over the window, None when fewer than 2 values are known."""
        rewards = self._hist["reward"]
        return fitted_rise(rewards) if len(rewards) >= 2 else None

    def _check_entropy(self, h: float) -> _Finding | None:
        """Level rule h < frac·H0, or trend rule: the last `window` (>= 3) values fall every
        step and the fitted line crosses frac·H0 within `window` more steps. Both gated on
        reward not rising (unknown reward counts as a plateau)."""
        if self._entropy_h0 is None:
            self._entropy_init.append(h)
            if len(self._entropy_init) < self.window:
                return None
            self._entropy_h0 = _mean(self._entropy_init)
        h0, w = self._entropy_h0, self.window
        floor = self.entropy_collapse_frac * h0
        hist = self._hist["entropy"]
        level = h < floor
        falling = len(hist) == w >= 3 and all(b < a for a, b in zip(hist, hist[1:], strict=False))
        slope = fitted_rise(hist) / (w - 1) if len(hist) >= 2 else 0.0
        trend = falling and h + slope * w < floor
        rise = self._reward_rise()
        plateau = rise is None or rise <= self.reward_rise_tol
        reward_txt = (
            "reward is not logged"
            if rise is None
            else f"reward changed by {rise:+.3f} over the last {len(self._hist['reward'])} steps"
        )
        why = (
            f"mean token entropy {h:.3f} is below {self.entropy_collapse_frac:.0%} of its initial {h0:.3f}"
            if level
            else f"mean token entropy {h:.3f} fell at every one of the last {w} steps ({slope:+.3f}/step) and will cross {floor:.3f} (= {self.entropy_collapse_frac:.0%} of initial {h0:.3f}) within {w} steps at this rate"
        )
        message = (
            f"Entropy collapse: {why}, while {reward_txt}. The policy is becoming near-deterministic "
            "while reward has stopped rising: once entropy is spent, exploration stops and reward plateaus "
            "(Cui et al., arXiv 2505.22617)."
        )
        action = (
            "raise clip_high (DAPO clip-higher, e.g. 0.28) so low-probability tokens can grow; "
            "lower the learning rate if the fall is abrupt; consider covariance-based entropy "
            "control (Clip-Cov / KL-Cov) or a small positive entropy bonus"
        )
        return _Finding((level or trend) and plateau and not self._converged(), h, message, action)

    def _converged(self) -> bool:
        """Accuracy has closed `converged_frac` of its starting headroom: a policy that now
        answers (nearly) everything right is meant to be near-deterministic, and its correct
        answers are already near probability 1. Unknown accuracy: not converged."""
        acc, a0 = self._hist["accuracy"], self._acc_init
        if not acc or len(a0) < self.window:
            return False
        start = _mean(a0)
        return _mean(acc) >= start + self.converged_frac * (1.0 - start)

    def _check_zero_adv(self) -> _Finding | None:
        """Window mean of zero_adv_frac > threshold (needs `window` values)."""
        hist = self._hist["zero_adv"]
        if len(hist) < self.window:
            return None
        frac = _mean(hist)
        correct, wrong = self._hist["all_correct"], self._hist["all_wrong"]
        if correct and wrong and _mean(correct) + _mean(wrong) > 0:
            share = _mean(correct) / (_mean(correct) + _mean(wrong))
            kind = (
                "mostly all-correct (prompts too easy)"
                if share >= 0.5
                else "mostly all-wrong (prompts too hard)"
            )
            split = f" They are {kind}: {share:.0%} all-correct, {1 - share:.0%} all-wrong."
            fix = (
                "use harder prompts / a curriculum"
                if share >= 0.5
                else "use easier prompts, a larger group size, or an SFT / distillation warm-start"
            )
        else:
            split, fix = "", "rebalance prompt difficulty"
        message = (
            f"Zero-advantage saturation: on average {frac:.0%} of prompt groups over the last "
            f"{self.window} steps had identical rewards for every sample.{split} Such groups get "
            "zero GRPO advantage and contribute no gradient, so the effective batch shrinks and "
            "learning stalls (DAPO dynamic sampling, arXiv 2503.14476)."
        )
        action = f"enable dynamic sampling (filter zero-variance groups and resample, DAPO); {fix}"
        return _Finding(frac > self.zero_adv_frac, frac, message, action)

    def _check_lld(self) -> dict[str, _Finding | None]:
        """The three LLD phases over the last `window` values D of logp_delta_pos:
        stagnation: mean(D) <= tol while reward rises (fitted rise > reward_rise_tol) and the
        run has not converged; decay: every D < -tol; collapse: decay and
        mean(late half) <= accel·mean(early half).

        Why only stagnation is gated on convergence: near convergence most groups are
        all-correct (zero advantage), and the positive-advantage tokens are the correct
        answers of the few mixed groups, whose logprob is already near 0, so an update can
        raise them by at most -logprob ~ 0. GRPO also gives them little weight: 7 right and
        1 wrong in a group of 8 gives A = +0.35 to each right answer and -2.47 to the wrong
        one. mean(D) ~ 0 is then the ceiling, not displacement. (On the default arithmetic
        run stagnation fired at step 14, batch accuracy 97%, before this gate; the tests
        replay a run of that shape.) Decay is different: the ceiling explains D ~ 0, not
        D < -tol at every update. A converged policy whose correct answers lose likelihood
        at every update is moving mass off them, the phase the paper sees before reward
        crashes, and near convergence the reward curve cannot show it yet; so decay and
        collapse (which implies decay) are not gated."""
        d, w = self._hist["lpos"], self.window
        if len(d) < w:
            return {"lld_stagnation": None, "lld_decay": None, "lld_collapse": None}
        mean_d = _mean(d)
        neg = self._hist["lneg"]
        neg_txt = f" Negative responses moved {_mean(neg):+.4f}." if neg else ""
        head = f"Over the last {w} updates the mean token log-probability of positive-advantage responses changed by {mean_d:+.4f} nats/token per update.{neg_txt}"
        rise = self._reward_rise()
        stagnation = None
        if rise is not None:
            stagnation = _Finding(
                mean_d <= self.lld_tol and rise > self.reward_rise_tol and not self._converged(),
                mean_d,
                f"Likelihood displacement, stagnation phase: {head} Reward rose by {rise:+.3f}, yet correct "
                "responses are not becoming more likely: the update is displacing their probability "
                "mass (lazy likelihood displacement, arXiv 2512.04220). This phase precedes decay and collapse.",
                "add the LLDS regularizer (likelihood-preserving penalty on A >= 0 responses: regularizers: [{name: llds, coef: 0.2}] with trainer.mini_batches: 2) "
                "or a positive-example NLL term; watch diag/logp_delta_pos",
            )
        decay = all(x < -self.lld_tol for x in d)
        k = max(w // 2, 1)
        early, late = _mean(d[:k]), _mean(d[-k:])
        accelerating = decay and w >= 2 and late <= self.lld_accel * early
        return {
            "lld_stagnation": stagnation,
            "lld_decay": _Finding(
                decay,
                mean_d,
                f"Likelihood displacement, decay phase: {head} It fell at every update: the policy is "
                "steadily making its own correct answers less likely. Low confidence inflates "
                "gradients and leads to collapse (arXiv 2512.04220).",
                "add the LLDS regularizer (lambda 0.2) and lower the learning rate; keep checkpoints from before the decay",
            ),
            "lld_collapse": _Finding(
                accelerating,
                late,
                f"Likelihood displacement, collapse phase: {head} The decrease is accelerating "
                f"({early:+.4f} early vs {late:+.4f} late in the window): a self-reinforcing collapse "
                "in which reward usually crashes next (arXiv 2512.04220).",
                "stop and resume from a checkpoint before the decay began, with the LLDS regularizer and a lower learning rate",
            ),
        }

    def _check_grad(self, g: float) -> _Finding | None:
        """ZClip (arXiv 2504.02507): z = (g - mu)/(sigma + 1e-6) against EMA statistics that are
        initialised from the first `warmup` norms and then updated with the adaptively clipped
        norm mu + thr^2·sigma/z on a spike (so a spike does not inflate its own baseline).
        Departures: the EMA never sees ZClip's extra min with max_grad_norm; sigma is floored
        at `_GRAD_MIN_REL_STD`·mu; and a norm of exactly 0 is evaluated (z < 0, never a spike,
        and it counts towards re-arming) but enters neither the warmup nor the EMA. A zero
        norm is a step without gradient (every group zero-advantage), not a draw from the
        distribution of update norms: averaging zeros in would pull mu and sigma towards 0
        over a saturated stretch, and the next ordinary norm would read as a spike."""
        zc = self._zclip
        if zc["mean"] is None:
            if math.isfinite(g) and g > 0:
                zc["buffer"].append(g)
            if len(zc["buffer"]) >= self.warmup:
                buf = zc["buffer"]
                zc["mean"] = _mean(buf)
                zc["var"] = _mean([(x - zc["mean"]) ** 2 for x in buf])
                zc["buffer"] = []
            return None
        mu, thr, a = zc["mean"], self.grad_z_threshold, self.zclip_alpha
        std = max(zc["var"] ** 0.5, _GRAD_MIN_REL_STD * mu)
        z = (g - mu) / (std + 1e-6)
        spike = z > thr
        if g > 0:
            eff = mu + thr * thr * std / z if spike else g
            zc["mean"] = a * mu + (1 - a) * eff
            zc["var"] = a * zc["var"] + (1 - a) * (eff - zc["mean"]) ** 2
        message = (
            f"Gradient spike: gradient norm {g:.4g} is {z:.1f} standard deviations above its running "
            f"mean {mu:.4g} (ZClip EMA, alpha {a}, threshold z > {thr}). Spikes precede loss "
            "spikes and divergence, and in RL often come from a few degenerate or very long "
            "completions (arXiv 2504.02507)."
        )
        action = "lower the learning rate or clip adaptively (ZClip); inspect this step's samples for degenerate completions"
        return _Finding(spike, z, message, action)


def _is_num(v: object) -> bool:
    """A real, non-NaN number (bool excluded). +-inf counts: an infinite grad norm is news."""
    return isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(v)
