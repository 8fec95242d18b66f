"""Peak memory and time of the old-policy token pass, with and without THR, across vocabulary sizes.

    python bench/token_pass_memory.py                       # V = 8k, 32k, 64k, 152k (CPU)
    python bench/token_pass_memory.py --vocab 8192,32768    # fewer sizes

Writes bench/results/token_pass_memory.json. Each measurement runs in its own subprocess on a
random 2-layer Llama (hidden 64) with the given vocabulary and one rollout batch of
B prompts x G rows x T tokens (completion ids drawn from the first 2,000 ids, so each group's
used vocabulary V* stays near what real text uses). Peak = ru_maxrss after the pass minus
ru_maxrss once the model and batch exist: the extra memory the pass needs. Three paths:
  plain  the pass as the trainer runs it for old logprobs / HAPO: logprobs + entropy, chunked
  thr    the same plus THR's influence scores (rlkit/algorithms/token_weights.py)
  naive  THR from full [N, T, V] logits (the textbook way), only where it fits the budget
What should hold: thr - plain does not grow with V (THR works on V* only, O(chunk * |V*| + |V*| * H));
the pass as a whole grows with V only through one chunk of logits (chunk_size x V), never N x T x V.
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


def _child(path: str, v: int, b: int, g: int, t: int, chunk: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(ROOT))
    from rlkit.algorithms.token_weights import THR
    from rlkit.rollout.types import RolloutBatch
    from rlkit.trainer.token_pass import token_pass
    from rlkit.trainer.update import ForwardSettings

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=v, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg).eval()
    n = b * g
    gen = torch.Generator().manual_seed(0)
    lens = torch.randint(t // 2, t + 1, (n,), generator=gen)
    mask = torch.arange(t)[None] < lens[:, None]
    batch = RolloutBatch(
        prompt_ids=[torch.randint(0, 2000, (16,), generator=gen).tolist() for _ in range(b)],
        prompt_texts=[""] * b, completion_ids=torch.randint(0, 2000, (n, t), generator=gen) * mask,
        completion_mask=mask, engine_logprobs=torch.zeros(n, t),
        group_ids=torch.arange(b).repeat_interleave(g), prompt_index=torch.arange(b).repeat_interleave(g),
        completion_texts=[""] * n, finish_reason=["stop"] * n)
    correct = torch.rand(n, generator=gen) < 0.5
    fs = ForwardSettings(temperature=1.0, chunk_size=chunk, pad_id=0, shared_prefix=True,
                         micro_batch_tokens=g * t + 16, gen_budget=t)
    off = torch.autocast("cpu", enabled=False)
    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if path == "naive":
        with torch.no_grad():
            from rlkit.trainer.prefix import compute_logprobs
            from rlkit.trainer.update import forward_batch

            out = compute_logprobs(model, forward_batch(batch, torch.arange(n)), shared_prefix=True,
                                   with_hidden=True, pad_id=0)
            p = (out.hidden @ model.lm_head.weight.t()).softmax(-1)  # [N, T, V]
            err = torch.nn.functional.one_hot(batch.completion_ids[:, : p.shape[1]], v).float() - p
            hm = out.hidden * (correct[:, None, None] & mask[:, : p.shape[1], None])  # correct tokens only
            m_plus = torch.einsum("ntv,nth->vh", err * (hm.abs().sum(-1, keepdim=True) > 0), out.hidden)
            _ = ((out.hidden @ m_plus.t()) * err).sum(-1)
    else:
        token_pass(model, batch, fs, lambda: off, weighter=THR() if path == "thr" else None, correct=correct)
    seconds = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_bytes": (peak_kb - base_kb) * 1024, "seconds": round(seconds, 3)}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", default="8192,32768,65536,151936")
    p.add_argument("--b", type=int, default=4)
    p.add_argument("--g", type=int, default=8)
    p.add_argument("--t", type=int, default=128)
    p.add_argument("--chunk-size", type=int, default=1024)
    p.add_argument("--naive-max-gb", type=float, default=6.0, help="skip the naive path above this estimate")
    p.add_argument("--child", choices=["plain", "thr", "naive"], help=argparse.SUPPRESS)
    p.add_argument("--v", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return _child(a.child, a.v, a.b, a.g, a.t, a.chunk_size)
    sys.path.insert(0, str(ROOT / "bench"))
    from step import machine_info

    rows = []
    for v in (int(x) for x in a.vocab.split(",")):
        row = {"vocab": v}
        for path in ("plain", "thr", "naive"):
            if path == "naive" and 3 * a.b * a.g * a.t * v * 4 / 2**30 > a.naive_max_gb:
                row[path] = None
                continue
            out = subprocess.run([sys.executable, __file__, "--child", path, "--v", str(v), "--b", str(a.b),
                                  "--g", str(a.g), "--t", str(a.t), "--chunk-size", str(a.chunk_size)],
                                 capture_output=True, text=True, check=True)
            row[path] = json.loads(out.stdout.strip().splitlines()[-1])
        row["thr_minus_plain_mib"] = round((row["thr"]["peak_bytes"] - row["plain"]["peak_bytes"]) / 2**20, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"command": "bench/token_pass_memory.py " + " ".join(sys.argv[1:]), "batch": [a.b, a.g, a.t],
              "chunk_size": a.chunk_size, "machine": machine_info(), "results": rows}
    out = ROOT / "bench/results/token_pass_memory.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
