"""diagnostics.alarms: synthetic metric streams fire each alarm at the step its rule says,
and noisy-but-healthy streams fire nothing. Expected steps are worked out in comments."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import pytest

from rlkit.diagnostics.alarms import ALARM_NAMES, Alarm, AlarmMonitor, fitted_rise


def _run(monitor: AlarmMonitor, stream: list[dict]) -> list[Alarm]:
    out = []
    for step, rec in enumerate(stream):
        out += monitor.update(step, rec)
    return out


def _fired(alarms: list[Alarm]) -> dict[str, list[int]]:
    res: dict[str, list[int]] = {}
    for a in alarms:
        res.setdefault(a.name, []).append(a.step)
    return res


def _flat_reward(t: int) -> float:
    return 0.30 + (0.01 if t % 2 else -0.01)  # fitted rise over 5 steps ~ 0 -> plateau


def test_fitted_rise():
    # slope of [0, 1, 2, 3] is 1 -> change across 4 points = 3
    assert fitted_rise([0.0, 1.0, 2.0, 3.0]) == pytest.approx(3.0)
    assert fitted_rise([1.0, -1.0, 1.0, -1.0, 1.0]) == pytest.approx(0.0)
    assert fitted_rise([5.0]) == 0.0


# ---- entropy collapse ------------------------------------------------------------------
def test_entropy_level_rule_fires_at_expected_step():
    # H0 = mean(H[0..4]) = 2.0 -> collapse level 0.3 * 2.0 = 0.6.
    # t=5,6: 1.0 (>= 0.6); trend rule needs 5 strictly falling values: [2,2,2,2,1] is not.
    # t=7: 0.5 < 0.6 -> fires at step 7 (and only once while it stays low).
    ent = [2.0, 2.0, 2.0, 2.0, 2.0, 1.0, 1.0, 0.5, 0.5, 0.4, 0.4]
    stream = [{"policy/entropy": h, "reward/mean": _flat_reward(t)} for t, h in enumerate(ent)]
    alarms = _run(AlarmMonitor(), stream)
    assert _fired(alarms) == {"entropy_collapse": [7]}
    a = alarms[0]
    assert a.value == pytest.approx(0.5)
    assert "below 30% of its initial 2.000" in a.message
    assert "clip_high" in a.action


def _linear_decline(t: int) -> float:
    return 2.0 if t <= 4 else 2.0 - 0.2 * (t - 4)


def test_entropy_trend_rule_fires_before_level():
    # H = 2.0 for t<=4, then 1.8, 1.6, 1.4, 1.2, ... (H0 = 2.0, level 0.6).
    # t=7: last five [2.0, 2.0, 1.8, 1.6, 1.4] not strictly falling.
    # t=8: [2.0, 1.8, 1.6, 1.4, 1.2] falls every step, slope -0.2/step, projection
    #      1.2 + 5 * (-0.2) = 0.2 < 0.6 -> fires at 8 (the level rule alone would wait to t=12).
    stream = [
        {"policy/entropy": _linear_decline(t), "reward/mean": _flat_reward(t)} for t in range(14)
    ]
    assert _fired(_run(AlarmMonitor(), stream)) == {"entropy_collapse": [8]}


def test_entropy_decline_with_rising_reward_is_not_collapse():
    # Same entropy as above but reward climbs 0.05/step: fitted rise over 5 steps = 0.2 > 0.05,
    # entropy is being traded for reward (healthy sharpening), so no alarm.
    stream = [
        {"policy/entropy": _linear_decline(t), "reward/mean": 0.1 + 0.05 * t} for t in range(14)
    ]
    assert _fired(_run(AlarmMonitor(), stream)) == {}


def test_entropy_short_window_catches_fast_collapse_in_few_steps():
    # window=3 (a 6-10 step end-to-end run): H0 = mean(2.0, 1.6, 1.1) = 1.567, level 0.47.
    # t=2: last three [2.0, 1.6, 1.1] fall every step, slope -0.45, projection
    #      1.1 - 3 * 0.45 = -0.25 < 0.47 -> fires at step 2. No reward logged = plateau.
    stream = [{"policy/entropy": h} for h in (2.0, 1.6, 1.1, 0.6, 0.3, 0.15)]
    assert _fired(_run(AlarmMonitor(window=3), stream)) == {"entropy_collapse": [2]}


def _healthy_stream(n: int = 120, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for t in range(n):
        out.append(
            {
                "policy/entropy": 2.0 * (1 - 0.002 * t) + rng.uniform(-0.15, 0.15),
                "reward/mean": 0.3 + 0.002 * t + rng.uniform(-0.05, 0.05),
                "rollout/accuracy": 0.3 + rng.uniform(-0.05, 0.05),
                "diag/zero_adv_frac": rng.uniform(0.3, 0.85),
                "diag/zero_adv_all_correct_frac": 0.2,
                "diag/zero_adv_all_wrong_frac": 0.3,
                "diag/logp_delta_pos": 0.01 + rng.uniform(-0.008, 0.008),
                "diag/logp_delta_neg": -0.01 + rng.uniform(-0.008, 0.008),
                "train/grad_norm": 1.0 + rng.uniform(-0.1, 0.1),
            }
        )
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_healthy_stream_raises_nothing(seed):
    # Noisy but stable: entropy ±0.15 around a slow 0.2%/step decline, zero-adv <= 0.85,
    # positive responses gain likelihood, bounded grad-norm noise (|g - mu| <= 0.1 ~ 1.7 sigma
    # of a uniform ±0.1, below z = 2.5).
    assert _fired(_run(AlarmMonitor(), _healthy_stream(seed=seed))) == {}


# ---- zero-advantage saturation ----------------------------------------------------------
def _zero_adv_rec(frac: float, correct: float = 0.9, wrong: float = 0.05) -> dict:
    return {
        "diag/zero_adv_frac": frac,
        "diag/zero_adv_all_correct_frac": correct * frac,
        "diag/zero_adv_all_wrong_frac": wrong * frac,
    }


def test_zero_adv_saturation_fires_and_rearms():
    # 0.5 for t<5, 0.95 for t=5..14, 0.2 for t=15..24, 0.95 again from t=25.
    # Window mean (5): t=8 -> (0.5 + 4*0.95)/5 = 0.86; t=9 -> 0.95 > 0.9 -> fires at 9.
    # t=15 -> (4*0.95 + 0.2)/5 = 0.8: clear streak 1; t=19 -> streak 5 = window -> re-armed.
    # t=28 -> (0.2 + 4*0.95)/5 = 0.8; t=29 -> 0.95 -> fires again at 29.
    fracs = [0.5] * 5 + [0.95] * 10 + [0.2] * 10 + [0.95] * 8
    alarms = _run(AlarmMonitor(), [_zero_adv_rec(f) for f in fracs])
    assert _fired(alarms) == {"zero_adv_saturation": [9, 29]}
    assert alarms[0].value == pytest.approx(0.95)
    assert "all-correct" in alarms[0].message and "too easy" in alarms[0].message
    assert "dynamic sampling" in alarms[0].action


def test_zero_adv_message_all_wrong_and_unknown_split():
    alarms = _run(AlarmMonitor(window=2), [_zero_adv_rec(0.97, correct=0.0, wrong=1.0)] * 2)
    assert "too hard" in alarms[0].message
    alarms = _run(AlarmMonitor(window=2), [{"diag/zero_adv_frac": 0.97}] * 2)
    assert [a.step for a in alarms] == [1] and "all-wrong" not in alarms[0].message


# ---- likelihood displacement -----------------------------------------------------------
_STAG = [-0.002, 0.001, -0.001, 0.0005, -0.0015]  # mean -0.0006, not all negative


def _lld_stream(deltas: list[float], reward) -> list[dict]:
    return [{"diag/logp_delta_pos": d, "reward/mean": reward(t)} for t, d in enumerate(deltas)]


def test_lld_stagnation_fires_when_reward_rises():
    # +0.01 for t<10, then the _STAG cycle. Reward rises 0.02/step: fitted rise over 5 = 0.08.
    # Window means: t=13 -> (0.01 - 0.002 + 0.001 - 0.001 + 0.0005)/5 = 0.0017 > 1e-4;
    # t=14 -> mean(_STAG) = -0.0006 <= 1e-4 -> stagnation at 14. Not every value < 0: no decay.
    deltas = [0.01] * 10 + _STAG * 3
    alarms = _run(AlarmMonitor(), _lld_stream(deltas, lambda t: 0.2 + 0.02 * t))
    assert _fired(alarms) == {"lld_stagnation": [14]}
    assert alarms[0].value == pytest.approx(-0.0006)
    assert "LLDS" in alarms[0].action


def test_lld_stagnation_needs_rising_reward():
    deltas = [0.01] * 10 + _STAG * 3
    assert _fired(_run(AlarmMonitor(), _lld_stream(deltas, _flat_reward))) == {}


def test_lld_decay_steady_decrease():
    # +0.01 for t<10, then -0.005 every update. All five < -1e-4 first at t=14 -> decay at 14.
    # Not accelerating: late mean -0.005 > 2 * early mean -0.01 -> no collapse.
    deltas = [0.01] * 10 + [-0.005] * 10
    alarms = _run(AlarmMonitor(), _lld_stream(deltas, _flat_reward))
    assert _fired(alarms) == {"lld_decay": [14]}


def test_lld_measured_every_k_steps_judges_the_measured_updates():
    # diagnostics.post_update_every = 5: D is logged only at steps 5, 10, 15, ... (-0.005 each,
    # one update's change). Steps without it add nothing to D (no zero, no NaN), so the five
    # values needed for a verdict exist first at step 25, all < -1e-4 -> decay at 25, not before.
    stream = [{"reward/mean": _flat_reward(t), **({"diag/logp_delta_pos": -0.005} if t and t % 5 == 0 else {})}
              for t in range(31)]
    monitor = AlarmMonitor()
    alarms = _run(monitor, stream)
    assert _fired(alarms) == {"lld_decay": [25]}
    assert monitor.state_dict()["hist"]["lpos"] == [-0.005] * 5


def test_lld_collapse_accelerating_decrease():
    # t=10..14: -0.005 (decay fires at 14); then -0.005 * 1.6^(t-14): t=15 -0.008, t=16 -0.0128.
    # t=15: window [-.005, -.005, -.005, -.005, -.008]: early (first 2) -0.005, late (last 2)
    #       -0.0065 > 2 * -0.005 = -0.01 -> not yet.
    # t=16: window [-.005, -.005, -.005, -.008, -.0128]: late = -0.0104 <= -0.01 -> collapse at 16.
    deltas = [0.01] * 10 + [-0.005] * 5 + [-0.005 * 1.6 ** (t - 14) for t in range(15, 20)]
    alarms = _run(AlarmMonitor(), _lld_stream(deltas, _flat_reward))
    assert _fired(alarms) == {"lld_decay": [14], "lld_collapse": [16]}
    collapse = next(a for a in alarms if a.name == "lld_collapse")
    assert collapse.value == pytest.approx(-0.0104)
    assert "checkpoint" in collapse.action


# ---- gradient spikes -------------------------------------------------------------------
def _grad_stream(n: int, spikes: dict[int, float]) -> list[dict]:
    # bounded noise: 0.95, 1.05, 0.95, ... (mu ~ 1.0, sigma ~ 0.05, so |z| ~ 1 on normal steps)
    return [{"train/grad_norm": spikes.get(t, 0.95 if t % 2 == 0 else 1.05)} for t in range(n)]


def test_grad_spike_zclip():
    # warmup 25: t=0..24 initialise mu = 0.998, sigma = 0.0500 (population). t=30: g = 3.0,
    # z ~ (3.0 - 1.0)/0.05 ~ 40 > 2.5 -> spike at 30. t=32 (within window=5 of the last
    # spike): same episode, silent. t=45 (re-armed after 5 calm steps): fires again.
    stream = _grad_stream(60, {30: 3.0, 32: 3.0, 45: 4.0})
    alarms = _run(AlarmMonitor(), stream)
    assert _fired(alarms) == {"grad_spike": [30, 45]}
    assert alarms[0].value > 30  # the z-score
    assert "learning rate" in alarms[0].action


def test_grad_spike_inside_warmup_is_not_reported():
    # No statistics before 25 norms; the spike at t=10 then widens sigma (ZClip initialises
    # from the raw warmup norms), which is why the default warmup is long.
    assert _fired(_run(AlarmMonitor(), _grad_stream(30, {10: 5.0}))) == {}


def test_grad_spike_does_not_inflate_its_baseline():
    # ZClip updates the EMA with the clipped norm mu + thr^2 sigma / z, so a huge spike moves
    # the mean by at most (1 - 0.97) * thr * sigma: the next normal step stays calm.
    m = AlarmMonitor(warmup=25)
    _run(m, _grad_stream(31, {30: 1000.0}))
    assert m.state_dict()["zclip"]["mean"] == pytest.approx(1.0, abs=0.01)


def test_zero_grad_norm_is_a_calm_step_not_a_missing_one():
    # A fully saturated step (every group all-correct) has gradient norm exactly 0.
    # Spike at 30 fires; steps 31-35 are 0.0: evaluated (z = (0 - 1)/0.05 = -20, no spike),
    # so after window = 5 of them the alarm has re-armed and the spike at 36 fires again.
    # Were 0 skipped as missing, the alarm would still be active at 36 and stay silent.
    stream = _grad_stream(40, {30: 3.0, 36: 3.0, **{t: 0.0 for t in range(31, 36)}})
    assert _fired(_run(AlarmMonitor(), stream)) == {"grad_spike": [30, 36]}


def test_zero_grad_norms_leave_the_zclip_statistics_alone():
    # 100 saturated steps after warmup. Had the zeros entered the EMA, mu would fall to 0.048
    # (1.0 · 0.97^100) with sigma 0.21, and the next ordinary norm 1.05 would read as a spike
    # (z = (1.05 - 0.048)/0.21 = 4.8 > 2.5).
    m = AlarmMonitor()
    _run(m, _grad_stream(30, {}))
    before = m.state_dict()["zclip"]
    for t in range(30, 130):
        assert m.update(t, {"train/grad_norm": 0.0}) == []
    assert m.state_dict()["zclip"] == before
    assert m.update(130, {"train/grad_norm": 1.05}) == []


def test_saturated_steps_do_not_count_towards_warmup():
    # 10 zero norms, then the usual 0.95 / 1.05 noise: mu is initialised from the first 25
    # non-zero norms (1.0), not from a mix with the zeros (0.6, sigma 0.49).
    m = AlarmMonitor()
    assert _fired(_run(m, [{"train/grad_norm": 0.0}] * 10 + _grad_stream(40, {}))) == {}
    assert m.state_dict()["zclip"]["mean"] == pytest.approx(1.0, abs=0.01)


def test_identical_warmup_norms_do_not_pin_the_baseline():
    # 25 norms of exactly 1.0 give sigma = 0. Without a floor, 1.01 would be z = 0.01/1e-6 =
    # 1e4, and the clipped value mu + thr^2·0/z = mu would keep the baseline at 1.0 forever.
    # sigma is floored at 1% of mu: 1.01 is z ~ 1, the baseline follows it to ~1.01, and 1.5
    # is still a spike (z ~ (1.5 - 1.01)/0.0101 ~ 48).
    stream = [{"train/grad_norm": 1.0}] * 25 + [{"train/grad_norm": 1.01}] * 100
    stream.append({"train/grad_norm": 1.5})
    m = AlarmMonitor()
    alarms = _run(m, stream)
    assert _fired(alarms) == {"grad_spike": [125]}
    assert alarms[0].value == pytest.approx(48, rel=0.05)


# ---- robustness and resume ---------------------------------------------------------------
def test_missing_and_nan_metrics_are_skipped():
    m = AlarmMonitor(window=2)
    assert m.update(0, {}) == []
    assert m.update(1, {"policy/entropy": math.nan, "train/grad_norm": None}) == []
    # only present values count: H0 = mean(2.0, 2.0) from steps 2 and 4
    assert m.update(2, {"policy/entropy": 2.0}) == []
    assert m.update(3, {"reward/mean": 0.5}) == []
    assert m.update(4, {"policy/entropy": 2.0}) == []
    assert [a.name for a in m.update(5, {"policy/entropy": 0.1})] == ["entropy_collapse"]


def _mixed_stream() -> list[dict]:
    # every detector fires somewhere after step 20 (the split point below)
    out = []
    for t in range(45):
        rec = {
            "policy/entropy": 2.0 if t < 25 else 0.3,
            "reward/mean": _flat_reward(t),
            "diag/zero_adv_frac": 0.5 if t < 22 else 0.97,
            "diag/logp_delta_pos": 0.01 if t < 21 else -0.004 * 1.5 ** (t - 21),
            "train/grad_norm": 50.0 if t == 35 else (0.95 if t % 2 else 1.05),
        }
        out.append(rec)
    return out


def test_state_dict_json_roundtrip_resumes_exactly():
    stream = _mixed_stream()
    full = _run(AlarmMonitor(), stream)
    assert {a.name for a in full} == set(ALARM_NAMES) - {"lld_stagnation"}

    first = AlarmMonitor()
    head = [a for t in range(20) for a in first.update(t, stream[t])]
    state = json.loads(json.dumps(first.state_dict()))  # must survive JSON
    resumed = AlarmMonitor()
    resumed.load_state_dict(state)
    tail = [a for t in range(20, len(stream)) for a in resumed.update(t, stream[t])]
    assert [a.to_dict() for a in head + tail] == [a.to_dict() for a in full]


def test_alarm_is_json_serialisable():
    a = Alarm("grad_spike", 3, "msg", "act", 4.5)
    assert json.loads(json.dumps(a.to_dict())) == {
        "name": "grad_spike",
        "step": 3,
        "message": "msg",
        "action": "act",
        "value": 4.5,
    }


def test_bad_arguments():
    with pytest.raises(ValueError, match="window"):
        AlarmMonitor(window=0)
    with pytest.raises(ValueError, match="entropy_collapse_frac"):
        AlarmMonitor(entropy_collapse_frac=1.5)
    with pytest.raises(ValueError, match="version"):
        AlarmMonitor().load_state_dict({"version": 99})


def test_infinite_reward_rise_tol_disables_the_plateau_gate():
    # The rising-reward stream above, with the gate off: the trend rule fires at 8 as before.
    stream = [
        {"policy/entropy": _linear_decline(t), "reward/mean": 0.1 + 0.05 * t} for t in range(14)
    ]
    monitor = AlarmMonitor(reward_rise_tol=math.inf)
    assert _fired(_run(monitor, stream)) == {"entropy_collapse": [8]}


def test_docs_cover_every_alarm_and_default():
    import inspect

    doc = (Path(__file__).parents[3] / "docs" / "diagnostics.md").read_text()
    for name in ALARM_NAMES:
        assert f"### `{name}" in doc or f"`{name}` |" in doc, name
    for p in inspect.signature(AlarmMonitor).parameters.values():
        m = re.search(rf"\| `{p.name}` \| ([^ |]+) \|", doc)
        assert m and float(m.group(1)) == p.default, p.name


def _replay(monitor: AlarmMonitor, rows: list[dict]) -> dict[str, list[int]]:
    return _fired([a for r in rows for a in monitor.update(r["step"], r)])


def test_replayed_default_run_reports_saturation_not_collapse():
    """The metrics of a real `make train` run (tests/data, 50 steps): sampled accuracy rose
    from ~40% to ~100% while entropy fell 1.8 -> 0.05. That is convergence; what the run
    needs to hear is that its prompts became too easy (zero-advantage saturation)."""
    path = Path(__file__).resolve().parents[2] / "data/grpo_math_cpu_metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    # Recorded when the token-mean entropy was also logged as diag/entropy_mean; it is the
    # same quantity as `policy/entropy`, the one key the alarms read now.
    rows = [
        {("policy/entropy" if k == "diag/entropy_mean" else k): v for k, v in r.items()}
        for r in rows
    ]
    fired = _replay(AlarmMonitor(), rows)
    assert "entropy_collapse" not in fired
    # window mean of zero_adv_frac first exceeds 0.9 at step 17 (see alarms.jsonl of the run)
    assert fired["zero_adv_saturation"][0] == 17
    # Without the convergence gate the entropy rule fires at step 11: H = 0.416 < 0.3 * H0
    # (H0 = 1.821) and reward's fitted change over steps 7-11 is -0.019 (a plateau). The gate
    # holds it: A0 = mean accuracy of steps 1-5 = (0.281 + 0.25 + 0.438 + 0.344 + 0.672) / 5
    # = 0.397, and the window mean over steps 7-11 = (0.859 + 0.891 + 0.953 + 0.938 + 0.813) / 5
    # = 0.891 >= 0.397 + 0.75 * (1 - 0.397) = 0.849.
    assert _replay(AlarmMonitor(converged_frac=1.0), rows)["entropy_collapse"] == [11]


def test_collapse_at_a_low_ceiling_still_fires():
    # accuracy 0.2 for 5 steps, then stuck at 0.4 while entropy falls to 10% of H0: the window
    # mean 0.4 < 0.2 + 0.75 * 0.8 = 0.8, so this is collapse, not convergence
    stream = [{"policy/entropy": 2.0, "rollout/accuracy": 0.2} for _ in range(5)]
    stream += [{"policy/entropy": 0.2, "rollout/accuracy": 0.4} for _ in range(6)]
    fired = _fired(_run(AlarmMonitor(), stream))
    # steps 5.. have H = 0.2 < 0.6; reward (= accuracy here) over the window rises 0.2 -> 0.4
    # until step 8 (window 4..8 = [0.2, 0.4, 0.4, 0.4, 0.4], fitted rise 0.16 > 0.05); at step 9
    # the window is flat at 0.4 -> plateau -> fires
    assert fired == {"entropy_collapse": [9]}


# ---- likelihood displacement at convergence ----------------------------------------------
_LLD = ("lld_stagnation", "lld_decay", "lld_collapse")


def _converged_run() -> list[dict]:
    """GRPO on single-digit arithmetic that converges by step ~10 (data/README.md)."""
    path = Path(__file__).parent / "data" / "grpo_arith_converged_metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_replayed_converged_run_raises_no_lld_alarm():
    # At step 14 batch accuracy is 62/64 = 97%: correct answers have no likelihood left to
    # gain, so positive responses' likelihood not rising is not a problem there.
    rows = _converged_run()
    assert rows[13]["step"] == 14 and rows[13]["rollout/accuracy"] == pytest.approx(0.96875)
    fired = _replay(AlarmMonitor(), rows)
    assert not set(_LLD) & set(fired), fired
    # D changes sign (steps 16-20: +0.0007, -0.0004, -0.0013, +0.0002), so decay never holds;
    # entropy_collapse is held by the same gate; grad warmup (25 non-zero norms) ends at 29.
    assert fired == {}
    # Without the gate (converged_frac = 1: only a perfect window is converged) stagnation
    # fires at 14, as it did in the run: D over steps 10-14 has mean
    # (0.0012 - 0.0009 + 0.0003 - 0.0006 - 0.0011) / 5 = -0.00022 <= 1e-4, and reward (60, 57,
    # 61, 63, 62 of 64) has fitted rise (-2·60 - 57 + 63 + 2·62) / 64 / 10 · 4 = 0.0625 > 0.05.
    # The gate holds it: A0 = (30 + 34 + 37 + 41 + 46) / 5 / 64 = 0.5875, and the window mean
    # (60 + 57 + 61 + 63 + 62) / 5 / 64 = 0.947 >= 0.5875 + 0.75 · (1 - 0.5875) = 0.897.
    assert _replay(AlarmMonitor(converged_frac=1.0), rows)["lld_stagnation"] == [14]


@pytest.mark.parametrize("accuracy", [0.5, None], ids=["stuck_at_0.5", "not_logged"])
def test_lld_stagnation_still_fires_when_not_converged(accuracy):
    # The same likelihood and reward/mean (rising, e.g. a shaped reward whose format bonus is
    # what is being learned) with accuracy stuck at 0.5: 0.5 < 0.5 + 0.75 · 0.5, not converged.
    # Accuracy not logged: convergence unknown, not assumed. Either way stagnation fires at 14.
    rows = []
    for r in _converged_run():
        r = {k: v for k, v in r.items() if k != "rollout/accuracy"}
        rows.append(r if accuracy is None else {**r, "rollout/accuracy": accuracy})
    fired = _replay(AlarmMonitor(), rows)
    assert fired["lld_stagnation"] == [14]


def test_lld_decay_is_not_gated_on_convergence():
    # The converged run, but from step 16 on the correct answers lose 0.001 nats/token at
    # every update. At step 18 D = [-0.0006, -0.0011, -0.001, -0.001, -0.001] (steps 13, 14,
    # 16, 17, 18; step 15 has no D): all < -1e-4 -> decay, although accuracy's window mean
    # (62 + 64 + 62 + 63 + 61) / 5 / 64 = 0.975 is converged. Not accelerating: late mean
    # -0.001 > 2 · early mean -0.00085 -> no collapse.
    rows = [
        {**r, "diag/logp_delta_pos": -0.001}
        if r["step"] >= 16 and "diag/logp_delta_pos" in r
        else r
        for r in _converged_run()
    ]
    fired = _replay(AlarmMonitor(), rows)
    assert fired == {"lld_decay": [18]}


def test_replayed_amx_run_after_the_seam_change():
    """`make train` on an AVX512-BF16/AMX CPU (bf16), 2026-12-01, after the trainer seam change
    (tests/data/grpo_math_cpu_amx_metrics.jsonl): held-out accuracy 65.5% -> 93.5% at step 10,
    fully saturated steps log a gradient norm of exactly 0. What fires is saturation (the task
    became too easy), never entropy collapse or likelihood displacement."""
    path = Path(__file__).resolve().parents[2] / "data/grpo_math_cpu_amx_metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows = [{k: (float("nan") if v is None else v) for k, v in r.items()} for r in rows if "time/step" in r]
    assert sum(r["train/grad_norm"] == 0.0 for r in rows) >= 5  # zero, not NaN
    fired = _replay(AlarmMonitor(), rows)
    assert fired["zero_adv_saturation"][0] == 20
    assert not any(name in fired for name in ("entropy_collapse", *_LLD))
    # the convergence gate is what keeps entropy_collapse quiet here (it fires at step 12 without it)
    assert _replay(AlarmMonitor(converged_frac=1.0), rows)["entropy_collapse"] == [12]
