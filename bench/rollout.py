"""Rollout throughput: rlkit's VLLMEngine vs raw `vllm.LLM.generate` vs the HF engine.

    python bench/rollout.py                      # default workload, ~8 min on 2 busy cores
    python bench/rollout.py --rounds 1 --skip-hf # a quick look
    python bench/rollout.py --skip-hf && python bench/rollout.py --skip-vllm --merge   # in two parts

Writes bench/results/rollout.json. Workload (issue 3, acceptance 4): SmolLM2-135M-Instruct (the
embedded model), 8 arithmetic prompts x 8 samples x 64 new tokens, temperature 1.0, EOS
ignored so every row has exactly 64 tokens (tokens/s then measures decoding, not how early a
sample happens to stop).

What is timed, all in this one process:
1. HF engine (`transformers.generate` through `HFEngine`), fp32 then bf16, `--hf-rounds` each.
   These run *before* vLLM starts: vLLM's CPU worker pins torch to one thread per core it owns
   and refuses `set_num_threads` afterwards, which would handicap transformers if it ran later.
2. One compiled (default) or eager vLLM engine in `--dtype` (auto: fp32 on CPUs without native
   bf16, where bf16 is emulated and 5x slower), then `--rounds` rounds of the triple [raw
   `LLM.generate`, raw `LLM.generate` with logprobs, `VLLMEngine.generate`] on the *same* `LLM`
   object, the order flipped every round so no side always runs on a warm prefix cache. Raw
   vLLM gets the same SamplingParams, once without logprobs (the cheapest raw call) and once
   with the sampled-token logprobs rlkit asks for (the same vLLM work); rlkit's call adds
   templating, logprob extraction and building the RolloutBatch tensors.
Medians over rounds are compared. The 1-minute load average is recorded around each timing:
on a shared machine other processes steal cores and every number moves together.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = [f"What is {a} + {b}? Answer with only the number." for a, b in
           [(2, 3), (4, 5), (7, 1), (6, 6), (8, 3), (9, 4), (5, 2), (3, 8)]]


def _timed(fn):
    """(result, wall seconds, cpu seconds of this process, load average before/after)."""
    load0 = os.getloadavg()[0]
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return out, wall, cpu, (load0, os.getloadavg()[0])


_PARTIAL: list[dict] = []  # every record so far, written to --out after each one
_OUT: Path | None = None


def _record(name: str, tokens: int, wall: float, cpu: float, load, **extra) -> dict:
    rec = dict(name=name, tokens=tokens, seconds=round(wall, 3), tokens_per_s=round(tokens / wall, 1),
               process_cpu_s=round(cpu, 2), loadavg_1m=[round(x, 2) for x in load], **extra)
    print(f"  {name:<22} {tokens:5d} tok  {wall:7.2f} s  {tokens / wall:7.1f} tok/s  load {load[0]:.1f}->{load[1]:.1f}",
          flush=True)
    _PARTIAL.append(rec)
    if _OUT is not None:  # a long run on a shared machine may be killed: keep what was measured
        _OUT.parent.mkdir(parents=True, exist_ok=True)
        _OUT.write_text(json.dumps({"partial": True, "runs": _PARTIAL}, indent=2))
    return rec


def bench_hf(model_path: str, dtype: str, sampling, args) -> list[dict]:
    import torch

    from rlkit.rollout.hf_engine import HFEngine

    engine = HFEngine(model_path, dtype=dtype, seed=args.seed)
    engine.generate(PROMPTS[:1], 1, type(sampling)(temperature=1.0, max_new_tokens=4))  # warm-up
    recs = []
    for r in range(args.hf_rounds):
        batch, wall, cpu, load = _timed(lambda: engine.generate(PROMPTS, args.group_size, sampling))
        recs.append(_record(f"hf_{dtype}", int(batch.completion_mask.sum()), wall, cpu, load,
                            round=r, torch_threads=torch.get_num_threads()))
    engine.close()
    return recs


def bench_vllm(model_path: str, sampling, args) -> tuple[list[dict], dict]:
    import torch
    from vllm.inputs import TokensPrompt

    from rlkit.rollout.engine import render_prompts
    from rlkit.rollout.vllm_engine import VLLMEngine, to_sampling_params

    t0 = time.perf_counter()
    engine = VLLMEngine(model_path, dtype=args.dtype, seed=args.seed, enforce_eager=args.enforce_eager,
                        cpu_kvcache_gib=2, max_model_len=1024)
    startup = time.perf_counter() - t0
    llm = engine.llm
    _, ids = render_prompts(engine.tokenizer, PROMPTS, chat_template=True)
    raw_prompts = [TokensPrompt(prompt_token_ids=p) for p in ids]
    raw_params = to_sampling_params(sampling, args.group_size, logprobs=False)

    def raw(params=raw_params):
        outs = llm.generate(raw_prompts, params, use_tqdm=False)
        return sum(len(c.token_ids) for o in outs for c in o.outputs)

    lp_params = to_sampling_params(sampling, args.group_size, logprobs=True)

    def raw_logprobs():  # the same vLLM work rlkit asks for: logprobs of every sampled token
        return raw(lp_params)

    def rlkit(sc=sampling):
        return int(engine.generate(PROMPTS, args.group_size, sc).completion_mask.sum())

    # Warm-up (short rows): first calls allocate, and both fill the prefix cache with the prompts.
    short = type(sampling)(temperature=1.0, max_new_tokens=8, ignore_eos=True)
    raw(to_sampling_params(short, args.group_size, logprobs=False)), rlkit(short)
    recs = []
    for r in range(args.rounds):
        order = [("vllm_raw", raw), ("vllm_raw_logprobs", raw_logprobs), ("vllm_rlkit_engine", rlkit)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            tokens, wall, cpu, load = _timed(fn)
            extra = {}
            if name == "vllm_rlkit_engine":
                # Time inside the engine's own llm.generate call: the rest (templating, logprob
                # extraction, tensor assembly) is rlkit's overhead, measured within one call,
                # so it holds even when machine load shifts between the paired runs.
                extra["inner_llm_generate_s"] = round(engine.last_generate_seconds, 3)
                extra["rlkit_overhead_frac"] = round(1 - engine.last_generate_seconds / wall, 4)
            recs.append(_record(name, tokens, wall, cpu, load, round=r,
                                torch_threads=torch.get_num_threads(), **extra))
    engine.close()
    return recs, {"vllm_startup_s": round(startup, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="alias, local directory or hub id")
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of [raw, raw+logprobs, VLLMEngine]")
    ap.add_argument("--hf-rounds", type=int, default=1, help="timed HF generate calls per dtype")
    ap.add_argument("--dtype", default="auto",
                    help="vLLM engine dtype; auto = bf16 on GPUs and CPUs with native bf16, else fp32")
    ap.add_argument("--enforce-eager", action="store_true", help="vLLM without torch.compile")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--skip-vllm", action="store_true")
    ap.add_argument("--merge", action="store_true",
                    help="keep runs of the parts skipped now from an existing --out (split runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "rollout.json"))
    args = ap.parse_args()

    import torch

    from rlkit.assets import resolve_model
    from rlkit.rollout.types import SamplingConfig

    global _OUT
    _OUT = Path(args.out)
    from rlkit.platform import resolve_dtype

    args.dtype = resolve_dtype(args.dtype)
    model_path = resolve_model(args.model)
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=args.max_new_tokens, ignore_eos=True)
    print(f"workload: {len(PROMPTS)} prompts x {args.group_size} samples x {args.max_new_tokens} tokens",
          flush=True)
    runs: list[dict] = []
    if not args.skip_hf:
        for dtype in ("float32", "bfloat16"):
            runs += bench_hf(model_path, dtype, sampling, args)
    info: dict = {}
    if not args.skip_vllm:
        vllm_runs, info = bench_vllm(model_path, sampling, args)
        runs += vllm_runs
    if args.merge and Path(args.out).exists():
        old = json.loads(Path(args.out).read_text())
        measured = {r["name"] for r in runs}
        runs = [r for r in old.get("runs", []) if r["name"] not in measured] + runs
        info = {**{k: v for k, v in old.items() if k == "vllm_startup_s"}, **info}

    def median(name: str) -> float | None:
        xs = [r["tokens_per_s"] for r in runs if r["name"] == name]
        return round(statistics.median(xs), 1) if xs else None

    med = {n: median(n) for n in ("vllm_raw", "vllm_raw_logprobs", "vllm_rlkit_engine", "hf_float32", "hf_bfloat16")}
    def ratio(a: str, b: str, nd: int) -> float | None:
        return round(med[a] / med[b], nd) if med[a] and med[b] else None

    ratios = {
        "engine_vs_raw_vllm": ratio("vllm_rlkit_engine", "vllm_raw", 3),
        "engine_vs_raw_vllm_logprobs": ratio("vllm_rlkit_engine", "vllm_raw_logprobs", 3),
        "engine_vs_hf_float32": ratio("vllm_rlkit_engine", "hf_float32", 2),
        "engine_vs_hf_bfloat16": ratio("vllm_rlkit_engine", "hf_bfloat16", 2),
    }
    import vllm

    result = dict(
        workload=dict(model=args.model, prompts=len(PROMPTS), group_size=args.group_size,
                      max_new_tokens=args.max_new_tokens, temperature=1.0, ignore_eos=True,
                      vllm_dtype=args.dtype, vllm_compiled=not args.enforce_eager),
        median_tokens_per_s=med,
        ratios=ratios,
        targets=dict(engine_vs_raw_vllm=">= 0.95", engine_vs_hf_same_dtype=">= 2.0"),
        runs=runs,
        machine=dict(cpus=os.cpu_count(), platform=platform.platform(), torch=torch.__version__,
                     vllm=vllm.__version__, cuda=torch.cuda.is_available()),
        **info,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)
    print(json.dumps({"median_tokens_per_s": med, "ratios": ratios}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
