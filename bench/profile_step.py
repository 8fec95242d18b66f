"""Where a recipe step's time goes: a py-spy profile of the default config, sorted into what is
model arithmetic and what is not (issue 17).

    python bench/profile_step.py                 # 5 steps of grpo_math_cpu.yaml, bench workload
    python bench/profile_step.py --steps 6 --rate 25

Runs the recipe under `py-spy record --native --subprocesses` (the `bench` extra installs
py-spy) with bench/step.py's workload (8 prompts x 8 completions x 64 tokens, the shipped
diagnostics), then reads the sampled stacks of the training process:
- every sample whose stack holds `train_step` is a sample of a step (the loop's logging,
  checkpointing and evaluation are outside it and counted apart);
- a step sample is put in the first category of `CATEGORIES` whose frame pattern its stack
  holds (the order matters: the optimizer step runs inside the backward call).
py-spy's native leaves do not say which kernel ran: oneDNN's GEMMs are JIT-generated code
without symbols and the autograd engine's frames do not resolve, so the split of the forward
and backward into arithmetic and the rest comes from `--ops` below.

`--ops` adds an op-level view of the train phase's core: `torch.profiler` over one forward +
backward of `compute_logprobs` (shared prefix, chunked logprobs, entropy) at the workload's
shape (8 prompts of 40 tokens, 8 completions of 36 tokens each, one micro-batch), fp32 weights
under bf16 autocast as the trainer runs them on a bf16 CPU. Its ops are summed by kind: matrix
multiplies and attention, dtype casts (autocast re-casts the fp32 weights at every forward),
elementwise and reductions, the rest.

Writes bench/results/profile_step.json (the table, the command, the machine) and
bench/results/profile_step.raw.gz (the collapsed stacks: `zcat ... | flamegraph.pl` or
speedscope.app draw them). py-spy's own sampling slows the process (about 30% at 20 Hz with
native stacks): the shares are what to read, and `seconds` are the shares times the step
time of the same run without the profiler when --step-json gives one.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from step import LAUNCH_CONFIG, RECIPE_CONFIG, machine_info  # noqa: E402

# (category, a frame pattern the sample's stack must hold). First match wins.
CATEGORIES = (
    ("generate (vLLM)", "collect_rollouts ("),
    ("optimizer: AdamW", "adam.py"),
    ("optimizer: ZeRO flatten / partition", "flatten_dense_tensors"),
    ("optimizer: ZeRO other (grad norm, clip, copies)", "DeepSpeedEngine.step ("),
    ("post-update diagnostics forward", "post_update_logprobs ("),
    ("weight-sync canary", "SyncCanary.check ("),
    ("weight sync", "sync_weights ("),
    ("train backward", "_engine_run_backward ("),
    ("train backward", "Policy.backward ("),
    ("train forward", "_forward ("),
    ("old-policy token pass", "token_pass ("),
    ("diagnostics metrics", "step_metrics ("),
)
def parse_raw(text: str) -> list[tuple[list[str], int]]:
    """py-spy's raw output: one `frame;frame;...;leaf count` line per distinct stack."""
    rows = []
    for line in text.splitlines():
        m = re.match(r"(.*) (\d+)$", line)
        if m:
            rows.append((m.group(1).split(";"), int(m.group(2))))
    return rows


def categorize(rows: list[tuple[list[str], int]]) -> dict:
    """Shares of the step samples per category (see CATEGORIES)."""
    total = sum(n for _, n in rows)
    step_rows = [(f, n) for f, n in rows if any(x.startswith("train_step (") for x in f)]
    in_step = sum(n for _, n in step_rows)
    cats: collections.Counter = collections.Counter()
    for frames, n in step_rows:
        joined = ";".join(frames)
        cats[next((c for c, pat in CATEGORIES if pat in joined), "other (Python glue, metrics, packing)")] += n
    return {"samples_total": total, "samples_in_steps": in_step,
            "categories": {c: round(n / in_step, 4) for c, n in cats.most_common()}}


OP_KINDS = (
    ("matmul / attention", re.compile(r"^aten::(mm|addmm|bmm|matmul|linear|_scaled_dot_product|"
                                      r"scaled_dot_product|_flash_attention|baddbmm|addmv)")),
    ("dtype casts / copies", re.compile(r"^aten::(copy_|_to_copy|to|clone|contiguous)$")),
    ("allocation / views", re.compile(r"^aten::(empty|empty_like|empty_strided|zeros|zeros_like|ones|view|reshape|"
                                      r"transpose|t|expand|slice|select|unsqueeze|squeeze|as_strided|permute|"
                                      r"index_select|_unsafe_view|detach|alias|split|chunk|narrow|resize_)")),
)


def op_profile(dtype: str = "bfloat16") -> dict:
    """Self CPU time of one compute_logprobs forward + backward at the workload's shape, by op kind."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlkit.assets import fetch_smollm2
    from rlkit.trainer.prefix import ForwardBatch, compute_logprobs

    model = AutoModelForCausalLM.from_pretrained(str(fetch_smollm2()), dtype=torch.float32, attn_implementation="sdpa")
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(100, 40000, (40,), generator=g).tolist() for _ in range(8)]
    batch = ForwardBatch(prompt_ids=prompts, completion_ids=torch.randint(100, 40000, (64, 36), generator=g),
                         completion_mask=torch.ones(64, 36, dtype=torch.bool),
                         group_ids=torch.arange(8).repeat_interleave(8))
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bfloat16" else torch.autocast("cpu", enabled=False)

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        with cast:
            out = compute_logprobs(model, batch, shared_prefix=True, with_entropy=True)
        out.logprobs.sum().backward()

    fwd_bwd()  # warm-up (oneDNN primitive creation)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fwd_bwd()
    kinds: collections.Counter = collections.Counter()
    top = []
    for ev in prof.key_averages():
        us = ev.self_cpu_time_total
        kind = next((k for k, pat in OP_KINDS if pat.search(ev.key)), "elementwise / reductions / other")
        kinds[kind] += us
        top.append((us, ev.key))
    total = sum(kinds.values())
    return {"dtype": dtype, "total_s": round(total / 1e6, 3),
            "kinds": {k: round(v / total, 4) for k, v in kinds.most_common()},
            "top_ops": [{"op": k, "s": round(us / 1e6, 3)} for us, k in sorted(top, reverse=True)[:15]]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rate", type=int, default=20, help="py-spy samples per second")
    p.add_argument("--step-json", type=Path, default=ROOT / "bench/results/step.json",
                   help="bench/step.py result of this machine: its rlkit_diag step time converts shares to seconds")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/profile_step.json")
    p.add_argument("--work-dir", type=Path, default=None)
    p.add_argument("--ops", action="store_true", help="also the op-level profile of one forward + backward")
    p.add_argument("--ops-only", action="store_true", help="only that (no recipe run); prints it")
    p.add_argument("--from-raw", type=Path, default=None,
                   help="re-read the categories of a saved profile (profile_step.raw.gz) into --out, keeping the rest")
    a = p.parse_args()
    if a.ops_only:
        print(json.dumps(op_profile(), indent=2))
        return
    if a.from_raw:
        report = json.loads(a.out.read_text())
        text = gzip.open(a.from_raw, "rt").read() if a.from_raw.suffix == ".gz" else a.from_raw.read_text()
        report.pop("leaf_kinds", None)
        report.update(categorize(parse_raw(text)))
        if report.get("unprofiled_step_s"):
            report["seconds"] = {c: round(x * report["unprofiled_step_s"], 2) for c, x in report["categories"].items()}
        a.out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report["categories"], indent=2))
        return
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        sys.exit("py-spy is not installed: pip install -e '.[bench]'")
    from rlkit.assets import fetch_smollm2

    work = a.work_dir or Path(tempfile.mkdtemp(prefix="rlkit_profile_"))
    work.mkdir(parents=True, exist_ok=True)
    raw = work / "profile.raw"
    overrides = [f"run.output_dir={work / 'run'}", "run.resume=false", f"model.name_or_path={fetch_smollm2()}",
                 "rollout.prompts_per_step=8", "rollout.group_size=8", "rollout.max_new_tokens=64",
                 "rollout.temperature=1.0", "trainer.learning_rate=3e-6", f"trainer.max_steps={a.steps}",
                 "trainer.checkpoint_every=0", "trainer.export_final=false", "eval.enabled=false",
                 "logging.progress=false", "logging.tensorboard=false", "logging.sample_every=0"]
    cmd = [py_spy, "record", "--native", "--subprocesses", "-r", str(a.rate), "-f", "raw", "-o", str(raw), "--",
           sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(LAUNCH_CONFIG),
           str(ROOT / "recipes/grpo_math.py"), "--config", str(RECIPE_CONFIG), *overrides]
    print(" ".join(cmd), flush=True)
    with open(work / "profile.log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    if rc != 0 or not raw.exists():
        sys.exit(f"the profiled run failed (rc={rc}); see {work / 'profile.log'}")
    table = categorize(parse_raw(raw.read_text()))
    rows = [json.loads(x) for x in (work / "run/metrics.jsonl").read_text().splitlines()]
    profiled_step_s = sum(r["time/step"] for r in rows[1:]) / max(1, len(rows) - 1)
    step_s = None
    if a.step_json.exists():
        step_s = json.loads(a.step_json.read_text())["results"].get("rlkit_diag", {}).get("mean", {}).get("total")
    report = {"command": "python " + " ".join([str(Path(sys.argv[0]).resolve().relative_to(ROOT)), *sys.argv[1:]]),
              "machine": machine_info(), "steps": a.steps, "rate_hz": a.rate,
              "profiled_step_s_mean_after_first": round(profiled_step_s, 2),
              "unprofiled_step_s": step_s, **table}
    if a.ops:
        report["train_ops"] = op_profile()
    if step_s:
        report["seconds"] = {c: round(share * step_s, 2) for c, share in table["categories"].items()}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    with open(raw, "rb") as src, gzip.open(a.out.with_suffix(".raw.gz"), "wb") as dst:
        shutil.copyfileobj(src, dst)
    print(json.dumps(report["categories"], indent=2))
    print(f"wrote {a.out} and {a.out.with_suffix('.raw.gz')}")


if __name__ == "__main__":
    main()
