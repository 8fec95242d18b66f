"""The same-budget methods table: every objective on one task, seed, step and token budget.

    python bench/methods.py                                   # every method, 30 steps each
    python bench/methods.py --methods grpo,dapo --steps 10    # a quick look
    python bench/methods.py --resume                          # rerun only what failed / is missing

Each method is the recipe (`accelerate launch recipes/grpo_math.py`) on
`recipes/configs/grpo_math_cpu_hard.yaml` with the same seed, steps, prompts x samples x tokens,
learning rate and evaluation, plus the overrides that make it that method; runs go one after
another, each in its own process (run it alone: 2 cores). Writes bench/results/methods.json and
bench/results/methods.md (the table for BENCHMARKS.md): held-out greedy accuracy before/after,
sampled pass@1 and pass@k after, final policy entropy (mean of the last 5 steps), mean
fraction of groups with identical rewards (`diag/zero_adv_frac`), mean fraction of rows with a
non-zero advantage (`diag/effective_batch_frac`), wall time. The expectation of each method is declared below, before
any run, and the table says whether it held. On a toy task a method that does not beat GRPO
is still a row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes/configs/grpo_math_cpu_hard.yaml"
LAUNCH = ROOT / "launch/accelerate/zero2_single.yaml"


@dataclass(frozen=True)
class Method:
    name: str
    overrides: tuple[str, ...]
    expect: str  # declared before running: what this method should move, relative to GRPO
    watch: str = "diag/zero_adv_all_wrong_frac"  # the metric shown as "first 5 -> last 5 steps"


# Recorded for every run (mean of the first 5 and of the last 5 steps), whichever it logs.
TRAJECTORY_KEYS = ("reward/mean", "rollout/accuracy", "diag/zero_adv_all_wrong_frac", "policy/entropy", "kd/kl",
                   "hpt/switched_frac", "relift/buffer", "sft/loss", "thr/pos_frac", "hapo/redistributed_frac")


# Every method names its loss in full (`loss={name: ...}` resets `loss.params`), so the shipped
# config's loss settings (token-mean, clip-higher) do not leak into a method that has its own.
# The baseline is GRPO as published: group-normalised advantage, PPO clip 0.2/0.2, seq-mean-
# token-mean. With one on-policy update per batch (the config's default) the ratio is 1, so
# the clip ranges never act; what tells GRPO, DAPO and Dr. GRPO apart here is the aggregation
# and the advantage. Expectations are written from the papers' claims, scaled down to what
# 30 steps of a 135M model on arithmetic can show.
GRPO = ("advantage={name: grpo}", "loss={name: grpo}")
METHODS = (
    Method("grpo", GRPO, "baseline: held-out accuracy rises; entropy falls"),
    Method("dr_grpo", ("advantage={name: dr_grpo}", "loss={name: dr_grpo}"),
           "about GRPO's accuracy; shorter wrong answers are no longer favoured (no std/length bias)"),
    Method("dapo", ("advantage={name: grpo}", "loss={name: dapo}"),
           "about GRPO's accuracy, entropy falls more slowly (clip-higher 0.28)"),
    Method("dapo_dynamic", ("advantage={name: grpo}", "loss={name: dapo}", "rollout.dynamic_sampling=true"),
           "lower zero-advantage fraction in the trained batches than GRPO, accuracy >= GRPO's, more wall time"),
    Method("grpo_llds", (*GRPO, "regularizers=[{name: llds, coef: 0.2}]", "trainer.mini_batches=2",
                         "trainer.use_engine_logprobs=false"),
           "accuracy about GRPO's; the likelihood of correct answers is kept (diag/logp_delta_pos >= GRPO's)"),
    Method("riskpo", ("advantage={name: riskpo, params: {bundle_size: 4}}", "loss={name: grpo}"),
           "pass@k >= GRPO's (the lower-tail term pushes hard questions), greedy accuracy about GRPO's"),
    Method("copo", ("advantage={name: copo, answer_extractor: last_number}", "loss={name: grpo}"),
           "higher effective-batch fraction than GRPO (the global term gives all-wrong and all-right "
           "groups an advantage), held-out accuracy >= GRPO's"),
    Method("vade", (*GRPO, "data.sampler={name: vade}"),
           "lower zero-advantage fraction than GRPO (prompts near 50% pass rate are chosen)"),
    # Token-level methods (declared 2026-12-01, before their first run). THR's sign decides
    # exploitation (p > 0) or exploration (p < 0), so the two rows are read against each other.
    Method("thr_pos", (*GRPO, "token_weights={name: thr, params: {p: 0.5}}"),
           "exploitation: final entropy below GRPO's and below thr_neg's; greedy accuracy >= GRPO's"),
    Method("thr_neg", (*GRPO, "token_weights={name: thr, params: {p: -0.5}}"),
           "exploration: final entropy above GRPO's and above thr_pos's; pass@4 >= thr_pos's"),
    Method("hapo", ("advantage={name: hapo_tlga}", "loss={name: hapo}"),
           "accuracy about DAPO's (within 5 points); final entropy >= DAPO's (on-policy, only the advantage "
           "redistribution acts: low-entropy tokens' advantages are scaled down, so they are sharpened less)",
           watch="hapo/redistributed_frac"),
    # Distillation and SFT mixing (declared 2026-12-01, before their first run). The teacher is
    # the recipe's own product: `--teacher` names a final_model/ trained by GRPO on this task
    # (see BENCHMARKS.md for the command); every student starts from the base model.
    Method("kdrl", (*GRPO, "model.teacher_model={teacher}",
                    "regularizers=[{name: kdrl, coef: 0.005, coef_end: 0.001, schedule: linear}]"),
           "held-out accuracy >= GRPO's; kd/kl falls over the run (the student moves toward a stronger "
           "teacher); a small effect at the paper's beta 5e-3", watch="kd/kl"),
    Method("hpt", (*GRPO, "mixing={name: hpt, params: {gamma: 0}}", "data.demo_field=demo"),
           "the share of all-wrong prompts (hpt/switched_frac) falls faster than GRPO's all-wrong share, "
           "held-out accuracy >= GRPO's (unsolved prompts are taught their answer)", watch="hpt/switched_frac"),
    Method("relift", (*GRPO, "mixing={name: relift, params: {buffer_size: 8, lr: 2.0e-5}}", "data.demo_field=demo"),
           "held-out accuracy >= GRPO's; all-wrong share falls faster than GRPO's (an SFT step on the 8 "
           "hardest prompts whenever 8 are collected)"),
)


def machine() -> dict:
    sys.path.insert(0, str(ROOT / "bench"))
    from step import machine_info  # noqa: PLC0415  (bench scripts are not a package)

    return machine_info()


def run_method(m: Method, a: argparse.Namespace, work: Path) -> dict:
    run_dir = work / m.name
    overrides = [
        f"run.output_dir={run_dir}", "run.resume=false", f"trainer.max_steps={a.steps}", f"trainer.seed={a.seed}",
        "trainer.checkpoint_every=0", "trainer.export_final=false", "eval.every=0",
        f"eval.samples={a.samples}", "logging.progress=false", "logging.tensorboard=false",
        *(o.replace("{teacher}", str(a.teacher)) for o in m.overrides),
    ]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(LAUNCH),
           str(ROOT / "recipes/grpo_math.py"), "--config", str(CONFIG), *overrides]
    print(f"[{m.name}] {' '.join(m.overrides) or '(config as shipped)'}", flush=True)
    t0 = time.time()
    with open(work / f"{m.name}.log", "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=a.timeout)
    out = {"method": m.name, "overrides": list(m.overrides), "expect": m.expect, "returncode": proc.returncode,
           "wall_min": round((time.time() - t0) / 60, 2)}
    if proc.returncode != 0:
        out["error"] = (work / f"{m.name}.log").read_text()[-3000:]
        print(f"[{m.name}] FAILED rc={proc.returncode}", flush=True)
        return out
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "time/step" in r]
    evals = [r for r in rows if "eval/accuracy" in r]

    def mean(key: str, rs: list[dict]) -> float | None:
        vals = [r[key] for r in rs if r.get(key) is not None]
        return round(sum(vals) / len(vals), 4) if vals else None

    out["trajectory"] = trajectory(steps)
    out.update({
        "acc_before": evals[0]["eval/accuracy"], "acc_after": evals[-1]["eval/accuracy"],
        "pass1_after": evals[-1].get("eval/pass@1"), f"pass{a.samples}_after": evals[-1].get(f"eval/pass@{a.samples}"),
        "pass1_before": evals[0].get("eval/pass@1"), f"pass{a.samples}_before": evals[0].get(f"eval/pass@{a.samples}"),
        "entropy_final": mean("policy/entropy", steps[-5:]), "zero_adv_mean": mean("diag/zero_adv_frac", steps),
        "effective_batch_mean": mean("diag/effective_batch_frac", steps),
        "logp_delta_pos_mean": mean("diag/logp_delta_pos", steps), "reward_mean": mean("reward/mean", steps),
        "completion_len_mean": mean("rollout/completion_len_mean", steps),
        "s_per_step": mean("time/step", steps[1:]), "steps": len(steps),
    })
    print(f"[{m.name}] acc {out['acc_before']:.3f} -> {out['acc_after']:.3f}  zero_adv {out['zero_adv_mean']}  "
          f"{out['wall_min']} min", flush=True)
    return out


def trajectory(steps: list[dict]) -> dict[str, list[float]]:
    """[mean of the first 5 steps, mean of the last 5] of each TRAJECTORY_KEYS metric logged."""
    out = {}
    for key in TRAJECTORY_KEYS:
        vals = [r[key] for r in steps if r.get(key) is not None]
        if vals:
            out[key] = [round(sum(vals[:5]) / len(vals[:5]), 4), round(sum(vals[-5:]) / len(vals[-5:]), 4)]
    return out


def table(results: list[dict], k: int) -> str:
    head = (f"| method | held-out acc. step 0 -> end | pass@1 / pass@{k} end | final entropy | "
            f"zero-adv. groups | effective batch | watched: first 5 -> last 5 steps | s/step | wall min | "
            f"expected (declared before the run) | held? |")
    lines = [head, "|" + "---|" * 11]
    watch = {m.name: m.watch for m in METHODS}
    for r in results:
        if r.get("returncode") != 0:
            lines.append(f"| {r['method']} | failed | | | | | | | | {r['expect']} | |")
            continue
        p1, pk = r.get("pass1_after"), r.get(f"pass{k}_after")
        passes = f"{p1:.3f} / {pk:.3f}" if p1 is not None and pk is not None else "n/a"
        key = watch.get(r["method"], "")
        seen = r.get("trajectory", {}).get(key)
        watched = f"{key}: {seen[0]} -> {seen[1]}" if seen else "n/a"
        lines.append(f"| {r['method']} | {r['acc_before']:.3f} -> **{r['acc_after']:.3f}** | {passes} | "
                     f"{r['entropy_final']} | {r['zero_adv_mean']} | {r.get('effective_batch_mean')} | "
                     f"{watched} | {r['s_per_step']} | {r['wall_min']} | "
                     f"{r['expect']} | {r.get('held', '(to judge)')} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default=",".join(m.name for m in METHODS))
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=4, help="eval.samples: k of pass@k after training")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/rlkit_methods"))
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/methods.json")
    p.add_argument("--resume", action="store_true", help="keep successful results already in --out")
    p.add_argument("--teacher", type=Path, default=Path("/tmp/rlkit_teacher/final_model"),
                   help="model.teacher_model of the kdrl row: a final_model/ trained by the recipe on this task")
    a = p.parse_args()
    os.environ.setdefault("PYTHONHASHSEED", "0")
    wanted = a.methods.split(",")
    unknown = sorted(set(wanted) - {m.name for m in METHODS})
    if unknown:
        p.error(f"unknown methods {unknown}; known: {[m.name for m in METHODS]}")
    a.work_dir.mkdir(parents=True, exist_ok=True)
    done: dict[str, dict] = {}
    if a.resume and a.out.exists():
        done = {r["method"]: r for r in json.loads(a.out.read_text())["results"] if r.get("returncode") == 0}
    results = []
    for m in METHODS:
        if m.name not in wanted:
            continue
        row = done.get(m.name)
        log = a.work_dir / m.name / "metrics.jsonl"
        if row is not None and "trajectory" not in row and log.exists():  # a row from before trajectories
            row["trajectory"] = trajectory([r for r in map(json.loads, log.read_text().splitlines())
                                            if "time/step" in r])
        results.append(row or run_method(m, a, a.work_dir))
        payload = {"command": " ".join(sys.argv), "config": str(CONFIG.relative_to(ROOT)), "steps": a.steps,
                   "seed": a.seed, "eval_samples": a.samples, "machine": machine(), "results": results}
        a.out.write_text(json.dumps(payload, indent=1))  # after every method: a killed run keeps its rows
    a.out.with_suffix(".md").write_text(table(results, a.samples) + "\n")
    print(table(results, a.samples))


if __name__ == "__main__":
    main()
