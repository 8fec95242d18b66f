"""How much of the machine a recipe step uses: achieved FLOP/s per phase over the measured peak.

    python bench/roofline.py                                   # peak + bench/results/step.json
    python bench/roofline.py --step-json bench/results/step.json --config rlkit_diag

Writes bench/results/roofline.json and prints a markdown table (issue 17). Three parts:

1. **Peak matmul FLOP/s** on this machine, fp32 and bf16, with torch's own GEMM (the kernels
   the trainer and vLLM's CPU backend call) at the model's shapes: a token block of M rows
   times each of SmolLM2-135M's weight matrices (576x576 attention, 576x1536 / 1536x576 MLP,
   576x49152 LM head). M = 2048 (a training micro-batch) and M = 64 (one decode step of 64
   sequences). The peak is the best of the M = 2048 shapes: the number a step could reach.
2. **Memory bandwidth**: a 512 MiB tensor copied (read + write) and summed (read), best of 5.
3. **One recipe step's model FLOPs per phase**, from a `bench/step.py` result (the phase
   seconds and the sampled token counts of the same run), N = the model's parameters (the LM
   head counted, tied to the embedding):
   - generate: 2·N·(P·p + P·G·c) + attention; the prompt is prefilled once per group (vLLM
     samples the G completions of a prompt from one prefill);
   - train: 6·N·(P·p + P·G·c) + 3 x attention: forward + backward with the shared prefix (each
     prompt encoded once per group), the LM head's chunked logprobs included in N;
   - attention: 4·d·layers per (query, key) pair: a prompt of p tokens costs 4·d·L·p²/2, a
     completion of c tokens after it 4·d·L·(c·p + c²/2).
   P prompts, G completions each, p the mean prompt length, c the mean completion length, d
   the hidden size, L the layers. The achieved fraction is FLOPs / seconds / peak. Generation
   decodes one token per sequence per forward, so it is bound by memory, not arithmetic: its
   row also gives the time to read the weights once per decode step (c_max steps) at the
   measured bandwidth, and that time over the phase's seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from step import _mean, machine_info  # noqa: E402  (bench/step.py: CPU flags, versions)


def gemm_flops(m: int, k: int, n: int, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """Sustained FLOP/s of an [m, k] @ [k, n] matmul, timed for about `seconds`."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(3):
        a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2.0 * m * k * n * reps / (time.perf_counter() - t0)


def bandwidth(mib: int = 512) -> dict[str, float]:
    """Best-of-5 bytes/s of a copy (read + write) and a sum (read) of a `mib` MiB fp32 tensor."""
    x = torch.empty(mib * 2**20 // 4, dtype=torch.float32).uniform_()
    y = torch.empty_like(x)
    copy, read = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        y.copy_(x)
        copy.append(2 * x.numel() * 4 / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        float(x.sum())
        read.append(x.numel() * 4 / (time.perf_counter() - t0))
    return {"copy_bytes_per_s": max(copy), "read_bytes_per_s": max(read)}


def model_shape(model_dir: str) -> dict:
    """Parameter count (embedding counted once: SmolLM2 ties it to the LM head) and the dims."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    n = sum(p.numel() for p in model.parameters())  # tied weights appear once
    return {"params": n, "hidden": cfg.hidden_size, "layers": cfg.num_hidden_layers,
            "intermediate": cfg.intermediate_size, "vocab": cfg.vocab_size,
            "tied_embeddings": bool(getattr(cfg, "tie_word_embeddings", False))}


def attention_flops(shape: dict, p: float, c: float) -> tuple[float, float]:
    """(prompt, completion) attention FLOPs: 4·d·L per (query, key) pair, causal."""
    k = 4.0 * shape["hidden"] * shape["layers"]
    return k * p * p / 2, k * (c * p + c * c / 2)


def step_flops(shape: dict, prompts: int, group: int, p: float, c: float) -> dict[str, float]:
    n = shape["params"]
    att_p, att_c = attention_flops(shape, p, c)
    prompt_tokens, completion_tokens = prompts * p, prompts * group * c
    fwd = 2 * n * (prompt_tokens + completion_tokens) + prompts * att_p + prompts * group * att_c
    return {"generate": fwd, "train": 3 * fwd, "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--step-json", type=Path, default=ROOT / "bench/results/step.json",
                   help="a bench/step.py result measured on this machine")
    p.add_argument("--config", default="rlkit", help="which of its rlkit configs to read (default: rlkit)")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/roofline.json")
    a = p.parse_args()

    from rlkit.assets import fetch_smollm2

    threads = torch.get_num_threads()
    print(f"torch threads: {threads}", flush=True)
    shape = model_shape(str(fetch_smollm2()))
    d, f, v = shape["hidden"], shape["intermediate"], shape["vocab"]
    mats = {"attn 576x576": (d, d), "mlp up 576x1536": (d, f), "mlp down 1536x576": (f, d), "lm head 576xV": (d, v)}
    gemm: dict[str, dict[str, float]] = {}
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        gemm[name] = {}
        for m in (2048, 64):
            for label, (k, n) in mats.items():
                gemm[name][f"M={m} {label}"] = round(gemm_flops(m, k, n, dtype) / 1e9, 1)
        print(name, gemm[name], flush=True)
    peak = {dt: max(v for k, v in g.items() if k.startswith("M=2048")) for dt, g in gemm.items()}
    bw = bandwidth()
    print(f"peak GFLOP/s {peak}; bandwidth copy {bw['copy_bytes_per_s'] / 1e9:.1f} GB/s, "
          f"read {bw['read_bytes_per_s'] / 1e9:.1f} GB/s", flush=True)

    report = {"command": "python " + " ".join([str(Path(sys.argv[0]).resolve().relative_to(ROOT)), *sys.argv[1:]]),
              "machine": machine_info(), "torch_threads": threads, "model": shape,
              "gemm_gflops": gemm, "peak_gflops": peak,
              "bandwidth_gb_s": {k.removesuffix("_bytes_per_s"): round(x / 1e9, 2) for k, x in bw.items()}}

    if a.step_json.exists():
        step = json.loads(a.step_json.read_text())
        res = step["results"].get(a.config, {})
        mean, w = res.get("mean"), step["workload"]
        if not mean or mean.get("prompt_len_mean") is None:
            sys.exit(f"{a.step_json} has no '{a.config}' result with rollout/prompt_len_mean; run bench/step.py first")
        dtype = w["dtype"]
        fl = step_flops(shape, w["prompts_per_step"], w["generations_per_prompt"], mean["prompt_len_mean"],
                        mean["completion_len_mean"])
        pk = peak[dtype] * 1e9
        weight_bytes = shape["params"] * (2 if dtype == "bfloat16" else 4)
        # decode forwards per generate: the longest completion of the step (the bench's max_new_tokens if unknown)
        decode_steps = _mean([s.get("completion_len_max") or w["max_new_tokens"] for s in res["per_step"][1:]
                              or res["per_step"]])
        bw_bound_s = decode_steps * weight_bytes / bw["read_bytes_per_s"]
        phases = {}
        for phase in ("generate", "train"):
            sec = mean[phase]
            achieved = fl[phase] / sec
            phases[phase] = {"seconds": sec, "gflop": round(fl[phase] / 1e9, 1), "achieved_gflops": round(achieved / 1e9, 1),
                             "fraction_of_peak": round(achieved / pk, 4)}
        phases["generate"]["weight_read_bound_s"] = round(bw_bound_s, 3)
        phases["generate"]["fraction_of_bandwidth_bound"] = round(bw_bound_s / mean["generate"], 4)
        report["step"] = {"source": str(a.step_json.relative_to(ROOT)) if a.step_json.is_relative_to(ROOT) else str(a.step_json),
                          "source_date": step["machine"].get("date"), "config": a.config, "dtype": dtype,
                          "prompts": w["prompts_per_step"], "group": w["generations_per_prompt"],
                          "prompt_len_mean": mean["prompt_len_mean"], "completion_len_mean": mean["completion_len_mean"],
                          "decode_steps": decode_steps, "phases": phases}
        print(f"\n| phase | seconds | model GFLOP | achieved GFLOP/s | peak {dtype} GFLOP/s | fraction of peak |")
        print("|---|---|---|---|---|---|")
        for phase, r in phases.items():
            print(f"| {phase} | {r['seconds']:.2f} | {r['gflop']:.0f} | {r['achieved_gflops']:.0f} | {peak[dtype]:.0f} | "
                  f"**{100 * r['fraction_of_peak']:.1f}%** |")
        print(f"generate: reading the weights once per decode step ({decode_steps:.0f} steps) takes {bw_bound_s:.2f} s "
              f"at the read bandwidth: {100 * phases['generate']['fraction_of_bandwidth_bound']:.1f}% of the phase")
    else:
        print(f"no {a.step_json}: peak and bandwidth only")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
