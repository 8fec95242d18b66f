"""Peak memory of chunked vs naive per-token logprobs + entropy (forward + backward).

    python bench/logprobs_memory.py                      # N=64 T=512 V=49152 H=64, CPU
    python bench/logprobs_memory.py --n 8 --t 512        # smaller
    python bench/logprobs_memory.py --device cuda        # on the GPU -> logprobs_memory_cuda.json

Writes bench/results/logprobs_memory.json. Each path runs in its own subprocess; its peak is
ru_maxrss after forward+backward minus ru_maxrss once the inputs exist, i.e. the extra memory
the path needs. The loss is sum(logprobs * coef), entropy computed (detached), as in training.

With --device cuda the peak is torch.cuda.max_memory_allocated minus the allocation once the
inputs exist, and the path runs once untimed first (CUDA/cuBLAS start-up), so `seconds` is a
warm forward + backward (synchronised). The budget default is then half the free GPU memory.

The naive path's peak is ~5 x N*T*V*4 bytes (32 GB at the default size). If that does not fit
in --naive-budget-gb (default: half of MemAvailable, so a shared machine is never pushed into
OOM), the naive path is measured at two smaller N (N', N'/2) and extrapolated linearly to N
(every big naive buffer is [N*T, V], so peak is linear in N; the two points check that), and
both paths are also reported measured at N' for a same-size ratio. The JSON says which.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAIVE_BYTES_PER_LOGIT = 5 * 4  # ~5 fp32 [N*T, V] buffers alive at the naive peak (estimate)


def _child(path: str, n: int, t: int, v: int, h: int, chunk_size: int, device: str = "cpu") -> None:
    import torch

    sys.path.insert(0, str(ROOT))
    from rlkit.trainer.logprobs import naive_logprobs, selective_logprobs

    fn = {"chunked": selective_logprobs, "naive": naive_logprobs}[path]
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, t, h, generator=g).to(device).requires_grad_()  # [N, T, H]
    weight = (0.02 * torch.randn(v, h, generator=g)).to(device).requires_grad_()  # [V, H]
    targets = torch.randint(0, v, (n, t), generator=g).to(device)  # [N, T]
    coef = torch.randn(n, t, generator=g).to(device)  # [N, T]
    if device != "cpu":
        return _child_cuda(fn, hidden, weight, targets, coef, chunk_size)
    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    lp, ent = fn(hidden, weight, targets, chunk_size=chunk_size, with_entropy=True)
    (lp * coef).sum().backward()
    seconds = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_bytes": (peak_kb - base_kb) * 1024, "seconds": round(seconds, 3)}))


def _child_cuda(fn, hidden, weight, targets, coef, chunk_size: int) -> None:
    import torch

    def run() -> None:
        lp, ent = fn(hidden, weight, targets, chunk_size=chunk_size, with_entropy=True)
        (lp * coef).sum().backward()
        del lp, ent

    run()  # warm-up: CUDA context, cuBLAS handles, allocator
    hidden.grad = weight.grad = None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    run()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() - base
    print(json.dumps({"peak_bytes": peak, "seconds": round(seconds, 4)}))


def _measure(path: str, n: int, a: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", path, "--n", str(n), "--t", str(a.t),
           "--v", str(a.v), "--h", str(a.h), "--chunk-size", str(a.chunk_size), "--device", a.device]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    res = json.loads(out.strip().splitlines()[-1])
    res["peak_mib"] = round(res["peak_bytes"] / 2**20, 1)
    print(f"{path:8s} N={n:4d} T={a.t} V={a.v}: peak +{res['peak_mib']} MiB, {res['seconds']} s")
    return res


def _mem_available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return 8.0


def _gpu_free_gb(device: str) -> float:
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return free / 2**30


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--t", type=int, default=512)
    p.add_argument("--v", type=int, default=49152)
    p.add_argument("--h", type=int, default=64)
    p.add_argument("--chunk-size", type=int, default=1024)
    p.add_argument("--naive-budget-gb", type=float, default=None)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--out", type=Path, default=None,
                   help="default bench/results/logprobs_memory.json (_cuda.json with --device cuda)")
    p.add_argument("--child", choices=["chunked", "naive"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return _child(a.child, a.n, a.t, a.v, a.h, a.chunk_size, a.device)

    on_gpu = a.device != "cpu"
    if a.out is None:
        a.out = ROOT / f"bench/results/logprobs_memory{'_cuda' if on_gpu else ''}.json"
    if a.naive_budget_gb is not None:
        budget_gb = a.naive_budget_gb
    else:
        budget_gb = (_gpu_free_gb(a.device) if on_gpu else _mem_available_gb()) / 2
    est_gb = a.n * a.t * a.v * NAIVE_BYTES_PER_LOGIT / 2**30
    result = {"config": {"N": a.n, "T": a.t, "V": a.v, "H": a.h, "chunk_size": a.chunk_size,
                         "dtype": "float32", "with_entropy": True, "device": a.device,
                         "measure": ("cuda max_memory_allocated delta, warm run" if on_gpu
                                     else "ru_maxrss delta")}}
    chunked = _measure("chunked", a.n, a)
    result["chunked_peak_mib"] = chunked["peak_mib"]
    result["chunked_seconds"] = chunked["seconds"]
    if est_gb <= budget_gb:
        naive = _measure("naive", a.n, a)
        result["naive_peak_mib"] = naive["peak_mib"]
        result["naive_seconds"] = naive["seconds"]
        result["naive_source"] = "measured"
    else:
        n1 = a.n
        while n1 * a.t * a.v * NAIVE_BYTES_PER_LOGIT / 2**30 > budget_gb and n1 > 1:
            n1 //= 2
        n2 = max(n1 // 2, 1)
        m1, m2 = _measure("naive", n1, a), _measure("naive", n2, a)
        slope = (m1["peak_bytes"] - m2["peak_bytes"]) / max(n1 - n2, 1)  # bytes per row of T
        naive_full = m1["peak_bytes"] + slope * (a.n - n1)
        c1 = _measure("chunked", n1, a)
        result["naive_peak_mib"] = round(naive_full / 2**20, 1)
        result["naive_source"] = (f"extrapolated linearly from N={n1} and N={n2} (estimated "
                                  f"{est_gb:.1f} GB > budget {budget_gb:.1f} GB)")
        result["naive_measured"] = {str(n1): m1["peak_mib"], str(n2): m2["peak_mib"]}
        result["same_size_measured"] = {"N": n1, "chunked_peak_mib": c1["peak_mib"],
                                        "naive_peak_mib": m1["peak_mib"],
                                        "ratio": round(c1["peak_bytes"] / m1["peak_bytes"], 4)}
    result["ratio_chunked_over_naive"] = round(result["chunked_peak_mib"] / result["naive_peak_mib"], 4)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
