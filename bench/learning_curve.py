"""Learning curve of a run: held-out greedy accuracy and batch reward vs step and wall time.

    python bench/learning_curve.py runs/grpo_math_cpu --out docs/learning_curve.png

Writes the PNG and a JSON summary (bench/results/learning_curve.json): accuracy at step 0
and at each evaluation, minutes since the first logged record (and since launch, given
--launched-at), and the gain in points.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load(run_dir: Path) -> list[dict]:
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # torn last line of a running run
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs/learning_curve.png"))
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "learning_curve.json")
    ap.add_argument("--launched-at", type=float, default=None,
                    help="unix time the command was started (`date +%%s`): adds minutes since launch, "
                         "which include setup, model load, engine start and the step-0 eval")
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = load(args.run_dir)
    t0 = min(r["time"] for r in records)
    evals = [(r["step"], r["eval/accuracy"], (r["time"] - t0) / 60) for r in records if r.get("eval/accuracy") is not None]
    train = [(r["step"], r["reward/mean"]) for r in records if r.get("reward/mean") is not None]

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([s for s, _ in train], [v for _, v in train], color="#bbb", label="batch reward (sampled, T=1)")
    ax.plot([s for s, _, _ in evals], [a for _, a, _ in evals], "o-", color="#1f6feb",
            label="held-out accuracy (200 problems, greedy)")
    for s, a, m in evals:
        ax.annotate(f"{a:.0%}\n{m:.0f} min", (s, a), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
    ax.set_xlabel("step")
    ax.set_ylabel("accuracy / reward")
    ax.set_ylim(0, 1.2)  # headroom for the labels above points near 100%
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_title(f"GRPO, SmolLM2-135M, arithmetic ({args.run_dir.name})")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)

    summary = {
        "run_dir": str(args.run_dir),
        "evals": [{"step": s, "accuracy": a, "minutes": round(m, 1)} for s, a, m in evals],
        "gain_points": round(100 * (max(a for _, a, _ in evals) - evals[0][1]), 1) if evals else None,
        "steps": max((s for s, _ in train), default=0),
        "minutes_total": round((max(r["time"] for r in records) - t0) / 60, 1),
    }
    if args.launched_at is not None:
        summary["startup_minutes"] = round((t0 - args.launched_at) / 60, 1)
        summary["minutes_since_launch_total"] = round((max(r["time"] for r in records) - args.launched_at) / 60, 1)
        for e in summary["evals"]:
            e["minutes_since_launch"] = round(e["minutes"] + summary["startup_minutes"], 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
