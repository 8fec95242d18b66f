"""Step-0 greedy held-out accuracy of SmolLM2-135M on arithmetic tasks of rising difficulty.

    python bench/task_difficulty.py                    # all settings, ~2 min on 2 cores
    python bench/task_difficulty.py --only 1 3         # a few of them (indices into SETTINGS)
    python bench/task_difficulty.py --dtype float32    # fp32 numerics (AVX2-only CPUs) on any CPU

Writes bench/results/task_difficulty.json, one entry per engine dtype (a run replaces its dtype's
entry and keeps the other). Used to pick a task where the untrained model starts
between 10% and 40% (recipes/configs/grpo_math_cpu_hard.yaml): the default a + b task starts
near 50%, which leaves GRPO little to learn.

What is measured, as the recipe's step-0 evaluation does it: the recipe's own config
(recipes/configs/grpo_math_cpu.yaml) with each setting's `data.*` overrides, its held-out
problems (`load_problems`, data.num_eval of them), one in-process `VLLMEngine` built from its
rollout section (chat template, dtype auto, eager), and `evaluate` (greedy, eval.max_new_tokens).
The engine starts once; the settings run one after another on it. Every completion is scored
by `math_accuracy` and, from the same completions, by the recipe's first reward `exact_number`
(what the run logs as `eval/accuracy`). They differ: math-verify also accepts a completion that
only restates the question and is cut off ("... First, we add them: 52 + 93" counts as 145),
so `math_accuracy` reads higher; `exact_number` is the number a run starts from.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # before anything imports vllm
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> data overrides of the recipe; the first one is the recipe's own task
SETTINGS: list[tuple[str, dict]] = [
    ("a+b, 0-9 (recipe)", {}),
    ("a+b, 0-49", {"max_operand": 49}),
    ("a+b, 10-49", {"min_operand": 10, "max_operand": 49}),
    ("a+b, 0-99", {"max_operand": 99}),
    ("a+b, 10-99", {"min_operand": 10, "max_operand": 99}),
    ("a+b+c, 0-9", {"num_terms": 3}),
    ("3 terms +/-, 0-9", {"num_terms": 3, "operations": ["+", "-"]}),
    ("a*b, 0-9", {"operations": ["*"]}),
    ("a*b, 2-12", {"operations": ["*"], "min_operand": 2, "max_operand": 12}),
    ("3 terms +/*, 0-9", {"num_terms": 3, "operations": ["+", "*"]}),
    ("3 terms +/-/*, 0-9", {"num_terms": 3, "operations": ["+", "-", "*"]}),
    ("2 terms +/-, 10-99", {"operations": ["+", "-"], "min_operand": 10, "max_operand": 99}),
]


def cpu_flags() -> dict:
    text = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return {"model_name": model, "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
            "avx2": "avx2" in flags, "cores": os.cpu_count()}


def measure(engine, cfg, problems, math_accuracy, exact_number) -> dict:
    """`evaluate` on these problems; one generation, scored by both rewards."""
    from rlkit.trainer.collect import RewardFunction, evaluate

    exact: list[float] = []
    examples: list[dict] = []

    def both(prompts, completions, answer, **_):
        # exact_number recorded on the side; math_accuracy is what evaluate counts
        exact.extend(exact_number(prompts, completions, answer))
        examples.extend({"question": p.prompt, "completion": c, "answer": p.answer}
                        for p, c in zip(problems[:3], completions[:3], strict=True))
        return math_accuracy(prompts, completions, answer)

    t = time.perf_counter()
    metrics = evaluate(engine, problems, RewardFunction("math_accuracy", both),
                       max_new_tokens=cfg.eval.max_new_tokens, seed=cfg.trainer.seed)
    return {"accuracy": {"math_accuracy": round(metrics["eval/accuracy"], 4),
                         "exact_number": round(sum(exact) / len(exact), 4)},
            "completion_len": round(metrics["eval/completion_len"], 2), "seconds": round(time.perf_counter() - t, 1),
            "examples": examples}


def save(out: Path, result: dict) -> None:
    """Write this run under `runs[<dtype>]`, keeping the other dtype's run already in the file
    (the two dtypes need two engines, so two invocations)."""
    old = json.loads(out.read_text()) if out.is_file() else {}
    runs = old.get("runs", {}) if isinstance(old.get("runs"), dict) else {}
    runs[result["dtype"]] = result
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runs": runs}, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "recipes" / "configs" / "grpo_math_cpu.yaml"))
    ap.add_argument("--only", type=int, nargs="*", help="indices into SETTINGS (default: all)")
    ap.add_argument("--dtype", default=None, help="engine dtype (default: the recipe's rollout.dtype, auto: "
                    "bf16 on CPUs with native bf16, else fp32); float32 shows an AVX2-only machine's numerics")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "task_difficulty.json"))
    args = ap.parse_args()

    from rewards import get_reward
    from rlkit.assets import resolve_model
    from rlkit.config import load_config
    from rlkit.data import load_problems
    from rlkit.platform import resolve_dtype
    from rlkit.rollout.vllm_engine import VLLMEngine

    base = load_config(args.config)
    r = base.rollout
    dtype = resolve_dtype(args.dtype or r.dtype)
    t0 = time.perf_counter()
    engine = VLLMEngine(resolve_model(base.model.name_or_path), dtype=dtype, seed=base.trainer.seed,
                        chat_template=r.chat_template, max_model_len=r.max_model_len,
                        cpu_kvcache_gib=r.cpu_kvcache_gib, enforce_eager=r.enforce_eager)
    start_s = time.perf_counter() - t0
    math_accuracy, exact_number = get_reward("math_accuracy"), get_reward("exact_number")

    result = {"date": time.strftime("%Y-%m-%d"), "config": os.path.relpath(args.config, ROOT),
              "model": base.model.name_or_path, "dtype": dtype, "cpu": cpu_flags(),
              "engine": "vllm", "engine_start_s": round(start_s, 1),
              "num_eval": base.data.num_eval, "max_new_tokens": base.eval.max_new_tokens,
              "settings": []}
    chosen = args.only if args.only else range(len(SETTINGS))
    for i in chosen:
        name, data = SETTINGS[i]
        cfg = load_config(args.config, [f"data.{k}={json.dumps(v)}" for k, v in data.items()])
        rec = {"index": i, "name": name, "data": data, **measure(engine, cfg, load_problems(cfg.data)[1],
                                                                   math_accuracy, exact_number)}
        result["settings"].append(rec)
        acc = rec["accuracy"]
        print(f"[{i}] {name:<22} math_accuracy {acc['math_accuracy']:.3f}  exact_number {acc['exact_number']:.3f}"
              f"  {rec['seconds']:.0f} s", flush=True)
        save(Path(args.out), result)  # after every setting: keep what was measured
    engine.close()


if __name__ == "__main__":
    main()
