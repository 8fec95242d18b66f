"""LoRA vs full fine-tuning on the CPU default: the same run twice, one after the other.

    python bench/lora_vs_full.py                      # 50 steps each (the configs' own)
    python bench/lora_vs_full.py --steps 20 --out bench/results/lora_vs_full_20.json

Runs `bash launch/train.sh <config> run.output_dir=<tmp>/<name> run.resume=false` for
`recipes/configs/grpo_math_cpu.yaml` (full fine-tuning) and `grpo_math_cpu_lora.yaml` (the same
run with a rank-16 LoRA adapter and 10x the learning rate), alone on the machine, and writes per
run: held-out greedy accuracy at every evaluation (with minutes since the first step), the mean
seconds per step and per phase (generate, train, sync) over the steps after the first, and the
wall time from launch to exit. Two cores are too noisy for a single pair of runs to settle a few
percent either way; the ratio is what to read.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"full": "recipes/configs/grpo_math_cpu.yaml", "lora": "recipes/configs/grpo_math_cpu_lora.yaml"}
PHASES = ("time/step", "time/generate", "time/train", "time/sync")


def cpu_flags() -> list[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return sorted(set(re.findall(r"\b(avx512_bf16|amx_bf16|avx2)\b", text)))


def summarize(run_dir: Path) -> dict:
    records = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    t0 = min(r["time"] for r in records)
    evals = [{"step": r["step"], "accuracy": round(r["eval/accuracy"], 4), "minutes": round((r["time"] - t0) / 60, 2)}
             for r in records if r.get("eval/accuracy") is not None]
    steps = [r for r in records if r.get("time/step") is not None and r["step"] > 1]  # step 1 warms up
    means = {k: round(sum(r.get(k, 0.0) for r in steps) / len(steps), 3) for k in PHASES}
    return {"evals": evals, "steps_timed": len(steps), "mean_seconds": means,
            "final_reward_mean_last10": round(sum(r["reward/mean"] for r in records if r.get("reward/mean") is not None
                                                  and r["step"] > max(s["step"] for s in steps) - 10) / 10, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=None, help="trainer.max_steps for both (default: the configs')")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "lora_vs_full.json")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rlkit_lora_vs_full_"))
    result: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "flags": cpu_flags(),
                                "date": time.strftime("%Y-%m-%d")}, "runs": {}}
    for name, config in CONFIGS.items():
        out_dir = work / name
        overrides = [f"run.output_dir={out_dir}", "run.resume=false"]
        if args.steps is not None:
            overrides.append(f"trainer.max_steps={args.steps}")
        print(f"[bench] {name}: {config} {' '.join(overrides)}", flush=True)
        t = time.time()
        proc = subprocess.run(["bash", "launch/train.sh", config, *overrides], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wall = time.time() - t
        if proc.returncode != 0:
            sys.exit(f"[bench] {name} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}")
        result["runs"][name] = {"config": config, "overrides": overrides, "wall_minutes": round(wall / 60, 2),
                                **summarize(out_dir)}
    full, lora = result["runs"]["full"]["mean_seconds"], result["runs"]["lora"]["mean_seconds"]
    result["lora_over_full"] = {k: round(lora[k] / full[k], 3) for k in PHASES if full[k]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
