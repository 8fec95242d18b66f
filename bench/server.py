"""Seconds per GRPO step with the rollouts in-process (colocated), on a vLLM server, and on a
server one step off policy (rollout.async), side by side in one invocation.

    python bench/server.py                      # all three, 6 steps each (~15 min on 2 cores)
    python bench/server.py --steps 3 --configs colocated,server

Writes bench/results/server.json. The workload is bench/step.py's (the default recipe:
SmolLM2-135M, 8 arithmetic prompts x 8 samples x at most 64 new tokens, one optimizer step per
batch, the shipped diagnostics), in the precision `dtype: auto` picks on this CPU. Configs, in
this order, each its own `accelerate launch` of recipes/grpo_math.py:

- `colocated`     rollout.engine: vllm (the engine in the trainer's process);
- `server`        rollout.engine: server, one vLLM server started here by `rlkit serve`'s code
                  (rlkit.rollout.serve) on 127.0.0.1, sync: sample, then train;
- `server_async`  the same server, rollout.async: true (max_staleness 1).

One server serves both server configs (started before `server`, stopped after
`server_async`); each run resets it to the base model at its health check. Step 1 is dropped
(warm-up). Per config: the mean of time/step and its phases (time/generate is the time the step
waited for rollouts: with async, only what the prefetch had not finished), the weight push
(time/weight_sync: the safetensors write and the server's reload for the server configs, the
in-memory load for colocated), and for async the overlap of the next step's generation with
this step's training (time/overlap) and the wait before the sync (time/prefetch_wait).

On 2 cores the server and the trainer share the same two cores: what the server computes
while the trainer trains is taken from the trainer. The figures say what the HTTP path, the
file-based weight push and the overlap cost or save on one small machine, not what they do
with the server on its own GPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step import QUIET, RECIPE_CONFIG, ROOT, _mean, launch_recipe, machine_info  # noqa: E402

CONFIGS = ("colocated", "server", "server_async")
KEYS = ("step", "generate", "score", "advantage", "train", "sync", "weight_sync", "overlap", "prefetch_wait",
        "generate_ahead")


def run_config(name: str, a: argparse.Namespace, model_dir: str, work: Path, url: str | None) -> dict:
    run_dir = work / name
    engine = ["rollout.engine=vllm"] if url is None else ["rollout.engine=server", f"rollout.servers=[{url}]"]
    overrides = [
        f"run.output_dir={run_dir}", "run.resume=false", f"model.name_or_path={model_dir}",
        f"rollout.prompts_per_step={a.prompts}", f"rollout.group_size={a.group}",
        f"rollout.max_new_tokens={a.max_new_tokens}", f"trainer.max_steps={a.steps}", *engine,
        *(["rollout.async=true"] if name == "server_async" else []), *QUIET,
    ]
    proc = launch_recipe(name, overrides, work, a.timeout)
    proc.pop("_sampler")
    out = {"overrides": [o for o in overrides if not o.startswith(("run.output_dir", "model.name_or_path"))],
           "process": proc}
    path = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    rows = [r for r in rows if "time/step" in r]
    if proc["returncode"] != 0 or not rows:
        out["error"] = "\n".join((work / f"{name}.log").read_text(errors="replace").splitlines()[-25:])
        print(f"[{name}] FAILED (rc={proc['returncode']}), see {proc['log']}", flush=True)
        return out
    out["per_step"] = [{"step": r["step"], **{k: r.get(f"time/{k}") for k in KEYS if k != "step"},
                        "total": r["time/step"], "staleness": r.get("rollout/staleness"),
                        "tokens": r["rollout/completion_len_mean"] * a.prompts * a.group,
                        "reward_mean": r["reward/mean"]} for r in rows]
    kept = out["per_step"][1:] or out["per_step"]
    out["mean"] = {k: _mean([s[k] for s in kept if s.get(k) is not None])
                   for k in ("total", *KEYS[1:], "tokens", "reward_mean", "staleness")
                   if any(s.get(k) is not None for s in kept)}
    out["mean"]["s_per_1k_tokens"] = round(1000 * out["mean"]["total"] / out["mean"]["tokens"], 3)
    print(f"[{name}] s/step {out['mean']['total']}  {out['mean']}", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--out", default=str(ROOT / "bench/results/server.json"))
    a = p.parse_args()
    from rlkit.assets import resolve_model
    from rlkit.config import load_config
    from rlkit.platform import resolve_dtype
    from rlkit.rollout.serve import start_server

    model_dir = resolve_model("smollm2-135m")
    dtype = resolve_dtype(load_config(RECIPE_CONFIG, [f"model.name_or_path={model_dir}"]).rollout.dtype)
    configs = [c for c in a.configs.split(",") if c]
    results: dict = {}
    work = Path(tempfile.mkdtemp(prefix="rlkit-bench-server-"))
    server = None
    try:
        for name in configs:
            url = None
            if name != "colocated":
                if server is None:
                    server = start_server(model_dir, dtype=dtype, max_model_len=1024, kv_gib=2, seed=0,
                                          log_path=work / "vllm_server.log", served_model_name="smollm2-135m")
                    server.wait_healthy(timeout_s=600)
                url = server.url
            results[name] = run_config(name, a, model_dir, work, url)
    finally:
        if server is not None:
            server.stop()
    ratios = {}
    base = results.get("colocated", {}).get("mean", {}).get("total")
    for name in ("server", "server_async"):
        m = results.get(name, {}).get("mean", {})
        if base and m.get("total"):
            ratios[f"{name}_over_colocated"] = round(m["total"] / base, 3)
    if results.get("server", {}).get("mean") and results.get("server_async", {}).get("mean"):
        ratios["server_async_over_server"] = round(results["server_async"]["mean"]["total"]
                                                   / results["server"]["mean"]["total"], 3)
    out = {"when": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "machine": machine_info(),
           "workload": {"model": "smollm2-135m", "dtype": dtype, "prompts": a.prompts, "group": a.group,
                        "max_new_tokens": a.max_new_tokens, "steps": a.steps, "steps_averaged": "2..steps"},
           "results": results, "ratios": ratios}
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(ratios), flush=True)
    print(f"wrote {a.out}", flush=True)


if __name__ == "__main__":
    main()
