"""Step-0 greedy held-out accuracy of SmolLM2-135M on arithmetic tasks of rising difficulty.

    python bench/task_difficulty.py                    # all settings, ~2 min on 2 cores
    python bench/task_difficulty.py --only 1 3         # a few of them (indices into SETTINGS)
    python bench/task_difficulty.py --dtype float32    # fp32 numerics (AVX2-only CPUs) on any CPU
    python bench/task_difficulty.py --suite reasoning_gym   # reasoning-gym tasks (the `tasks` extra)

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

`--suite reasoning_gym` does the same for reasoning-gym tasks (RG_SETTINGS) on the recipe
recipes/configs/grpo_reasoning_gym_cpu.yaml, writing bench/results/task_difficulty_reasoning_gym.json.
There the recipe's reward `reasoning_gym` (the task's own `score_answer`, best of the answer
candidates) is what `eval/accuracy` counts (a score of 1); its mean score (partial credit
included) and `exact_number` on the same completions are recorded beside it. Settings differ
in the task, its params and the prompt: the question as reasoning-gym writes it, or with
" Answer with only the number." appended (data.prompt_template).
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

ONLY_NUMBER = "{question} Answer with only the number."
# --suite reasoning_gym: name -> data overrides of grpo_reasoning_gym_cpu.yaml (task, params, prompt)
RG_SETTINGS: list[tuple[str, dict]] = [
    ("chain_sum 2 terms 1 digit", {"task": "chain_sum", "prompt_template": None,
                                   "task_params": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}}),
    ("chain_sum 2 terms 1 digit +only", {"task": "chain_sum", "prompt_template": ONLY_NUMBER,
                                         "task_params": {"min_terms": 2, "max_terms": 2, "min_digits": 1,
                                                         "max_digits": 1}}),
    ("chain_sum 2 terms 1-2 digits", {"task": "chain_sum", "prompt_template": None,
                                      "task_params": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}}),
    ("chain_sum 2 terms 1-2 digits +only", {"task": "chain_sum", "prompt_template": ONLY_NUMBER,
                                            "task_params": {"min_terms": 2, "max_terms": 2, "min_digits": 1,
                                                            "max_digits": 2}}),
    ("basic_arithmetic 2 terms 1 digit", {"task": "basic_arithmetic", "prompt_template": None,
                                          "task_params": {"min_terms": 2, "max_terms": 2, "min_digits": 1,
                                                          "max_digits": 1}}),
    ("basic_arithmetic 2 terms 1 digit +only", {"task": "basic_arithmetic", "prompt_template": ONLY_NUMBER,
                                                "task_params": {"min_terms": 2, "max_terms": 2, "min_digits": 1,
                                                                "max_digits": 1}}),
    ("gcd 2 numbers 1-20", {"task": "gcd", "prompt_template": None, "task_params": {"max_value": 20}}),
    ("leg_counting 1-2 animals 1-3 each", {"task": "leg_counting", "prompt_template": None,
                                           "task_params": {"min_animals": 1, "max_animals": 2, "max_instances": 3}}),
    ("products 2 terms 1 digit", {"task": "products", "prompt_template": None,
                                  "task_params": {"min_digits": 1, "max_digits": 1}}),
]
SUITES = {  # --suite -> (settings, recipe config, output file)
    "arithmetic": (SETTINGS, "grpo_math_cpu.yaml", "task_difficulty.json"),
    "reasoning_gym": (RG_SETTINGS, "grpo_reasoning_gym_cpu.yaml", "task_difficulty_reasoning_gym.json"),
}


def cpu_flags() -> dict:
    text = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return {"model_name": model, "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
            "avx2": "avx2" in flags, "cores": os.cpu_count()}


def measure(engine, cfg, problems, primary, side: dict) -> dict:
    """`evaluate` on these problems, as the recipe scores it with `primary`; one generation,
    also scored by each `side` reward (name -> function, its accuracy = score >= 1)."""
    from rlkit.trainer.collect import RewardFunction, evaluate

    scores: dict[str, list[float]] = {"primary": [], **{name: [] for name in side}}
    examples: list[dict] = []

    def both(prompts, completions, **kw):
        # the side rewards recorded on the side; `primary` is what evaluate counts
        for name, fn in side.items():
            scores[name].extend(fn(prompts, completions, **kw))
        examples.extend({"question": p.prompt, "completion": c, "answer": p.answer}
                        for p, c in zip(problems[:3], completions[:3], strict=True))
        out = primary(prompts, completions, **kw)
        scores["primary"].extend(out)
        return out

    t = time.perf_counter()
    metrics = evaluate(engine, problems, RewardFunction(primary.reward_name, both),
                       max_new_tokens=cfg.eval.max_new_tokens, seed=cfg.trainer.seed)
    accuracy = {primary.reward_name: round(metrics["eval/accuracy"], 4)}
    accuracy.update({name: round(sum(v >= 1 for v in vals) / len(vals), 4) for name, vals in scores.items()
                     if name != "primary"})
    return {"accuracy": accuracy, "mean_score": round(sum(scores["primary"]) / len(scores["primary"]), 4),
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
    ap.add_argument("--suite", choices=sorted(SUITES), default="arithmetic",
                    help="arithmetic (SETTINGS, grpo_math_cpu.yaml) or reasoning_gym (RG_SETTINGS, "
                         "grpo_reasoning_gym_cpu.yaml)")
    ap.add_argument("--config", default=None, help="recipe config (default: the suite's)")
    ap.add_argument("--only", type=int, nargs="*", help="indices into the suite's settings (default: all)")
    ap.add_argument("--dtype", default=None, help="engine dtype (default: the recipe's rollout.dtype, auto: "
                    "bf16 on CPUs with native bf16, else fp32); float32 shows an AVX2-only machine's numerics")
    ap.add_argument("--out", default=None, help="results file (default: the suite's, under bench/results/)")
    args = ap.parse_args()
    settings, config_name, out_name = SUITES[args.suite]
    args.config = args.config or str(ROOT / "recipes" / "configs" / config_name)
    args.out = args.out or str(ROOT / "bench" / "results" / out_name)

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
    if args.suite == "arithmetic":  # math_accuracy counted, the recipe's exact_number beside it
        primary, side = get_reward("math_accuracy"), {"exact_number": get_reward("exact_number")}
    else:  # the recipe's reward counted, exact_number beside it
        primary, side = get_reward(base.rewards[0].name), {"exact_number": get_reward("exact_number")}

    result = {"date": time.strftime("%Y-%m-%d"), "config": os.path.relpath(args.config, ROOT),
              "model": base.model.name_or_path, "dtype": dtype, "cpu": cpu_flags(),
              "engine": "vllm", "engine_start_s": round(start_s, 1),
              "num_eval": base.data.num_eval, "max_new_tokens": base.eval.max_new_tokens,
              "settings": []}
    chosen = args.only if args.only else range(len(settings))
    for i in chosen:
        name, data = settings[i]
        cfg = load_config(args.config, [f"data.{k}={json.dumps(v)}" for k, v in data.items()])
        rec = {"index": i, "name": name, "data": data, **measure(engine, cfg, load_problems(cfg.data)[1],
                                                                   primary, side)}
        result["settings"].append(rec)
        accs = "  ".join(f"{k} {v:.3f}" for k, v in rec["accuracy"].items())
        print(f"[{i}] {name:<38} {accs}  mean score {rec['mean_score']:.3f}  {rec['seconds']:.0f} s", flush=True)
        save(Path(args.out), result)  # after every setting: keep what was measured
    engine.close()


if __name__ == "__main__":
    main()
