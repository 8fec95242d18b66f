"""The `rlkit` command: train | validate | config | fetch-model | serve | report | bench.

Heavy libraries (torch, transformers, vLLM) are imported only inside the subcommand that
needs them, after argument parsing, so `rlkit --help` and config errors answer instantly.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _load(path: str, overrides: list[str]):
    """The validated config, or None after printing the config error to stderr (exit status 2)."""
    from rlkit.config import ConfigError, load_config

    try:
        return load_config(path, overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def _cmd_validate(args: argparse.Namespace) -> int:
    from rlkit.config import dump_config

    cfg = _load(args.config, args.overrides)
    if cfg is None:
        return 2
    print(f"{args.config}: valid")
    if args.show:
        print(dump_config(cfg))
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    if args.doc:
        if args.overrides:
            print("rlkit config --doc takes no overrides", file=sys.stderr)
            return 2
        from rlkit.config_doc import config_reference_markdown

        sys.stdout.write(config_reference_markdown())
        return 0
    from rlkit.config import dump_config

    cfg = _load(args.show, args.overrides)
    if cfg is None:
        return 2
    sys.stdout.write(dump_config(cfg))  # YAML only, so `> resolved.yaml` gives a loadable file
    return 0


def _cmd_fetch_model(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from rlkit.assets import MODEL_ALIASES, resolve_model

    if args.name not in MODEL_ALIASES:
        print(f"unknown model alias '{args.name}'. Known: {', '.join(MODEL_ALIASES)}", file=sys.stderr)
        return 2
    print(resolve_model(args.name))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from rlkit.config import ConfigError, load_config

    try:
        load_config(args.config, args.overrides)  # fail fast, before accelerate starts workers
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    recipe = REPO_ROOT / "recipes" / "grpo_math.py"
    launch_cfg = REPO_ROOT / "launch" / "accelerate" / args.accelerate_config
    # --num-processes only when given: the accelerate config names its own (zero2_8gpu.yaml: 8)
    procs = ["--num_processes", str(args.num_processes)] if args.num_processes is not None else []
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(launch_cfg), *procs,
           str(recipe), "--config", args.config, *args.overrides]
    return subprocess.call(cmd)


def _cmd_serve(args: argparse.Namespace) -> int:
    """Start a vLLM server for rollouts (rlkit/rollout/serve.py), print its URL, stop it on
    Ctrl-C / SIGTERM."""
    import signal

    from rlkit.assets import resolve_model
    from rlkit.rollout.serve import server_command, shell_command, start_server

    model = resolve_model(args.model)
    settings = dict(dtype=args.dtype, max_model_len=args.max_model_len, seed=args.seed, kv_gib=args.kv_gib,
                    served_model_name=args.served_model_name or args.model, enforce_eager=args.enforce_eager,
                    extra_args=list(getattr(args, "vllm_args", [])))
    argv, env = server_command(model, host=args.host, port=args.port, **settings)
    print(f"starting: {shell_command(argv, env)}", flush=True)
    if args.dry_run:
        return 0
    server = start_server(model, host=args.host, port=args.port, **settings)
    stopping = []

    def _stop(signum, _frame):  # Ctrl-C or SIGTERM: stop the server, then exit
        stopping.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        server.wait_healthy(timeout_s=args.start_timeout)
        print(f"vLLM server ready: {server.url}  (rollout.engine=server rollout.servers=[{server.url}]); "
              "Ctrl-C stops it", flush=True)
        return server.proc.wait()
    except KeyboardInterrupt:
        print("stopping the vLLM server", file=sys.stderr, flush=True)
        return 0
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        server.stop()


def _cmd_report(args: argparse.Namespace) -> int:
    from rlkit.diagnostics.report import write_report

    out = write_report(Path(args.run_dir), out_dir=Path(args.out) if args.out else None)
    print(out)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    script = REPO_ROOT / "bench" / f"{args.name}.py"
    if not script.is_file():
        names = sorted(p.stem for p in (REPO_ROOT / "bench").glob("*.py") if not p.stem.startswith("_"))
        print(f"unknown benchmark '{args.name}'. Available: {', '.join(names)}", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, str(script), *args.rest])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlkit", description="RL post-training for LLMs.")
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="check a recipe config and report every problem")
    v.add_argument("config")
    v.add_argument("overrides", nargs="*", help="a.b.c=value overrides")
    v.add_argument("--show", action="store_true", help="print the resolved config")
    v.set_defaults(fn=_cmd_validate)

    c = sub.add_parser("config", help="print a resolved config as YAML, or the config reference")
    what = c.add_mutually_exclusive_group(required=True)
    what.add_argument("--show", metavar="FILE", help="the config FILE with defaults filled and overrides applied")
    what.add_argument("--doc", action="store_true", help="the config reference, markdown (docs/config.md)")
    c.add_argument("overrides", nargs="*", help="a.b.c=value overrides (with --show)")
    c.set_defaults(fn=_cmd_config)

    f = sub.add_parser("fetch-model", help="download and convert an embedded model (cached)")
    f.add_argument("name", help="model alias, e.g. smollm2-135m")
    f.set_defaults(fn=_cmd_fetch_model)

    t = sub.add_parser("train", help="run recipes/grpo_math.py under accelerate launch")
    t.add_argument("config")
    t.add_argument("overrides", nargs="*", help="a.b.c=value overrides")
    t.add_argument("--num-processes", type=int, default=None,
                   help="processes to launch (default: the accelerate config's num_processes)")
    t.add_argument("--accelerate-config", default="zero2_single.yaml", help="file in launch/accelerate/")
    t.set_defaults(fn=_cmd_train)

    s = sub.add_parser("serve", usage="rlkit serve MODEL [options] [-- vLLM server arguments]",
                       help="start a vLLM server for rollout.engine: server (a thin wrapper of vLLM's "
                       "OpenAI server; prints the equivalent command)")
    s.add_argument("model", help="model alias (smollm2-135m), local directory or hub id")
    s.add_argument("--host", default="127.0.0.1", help="interface to bind (the dev routes it enables can change "
                   "the served weights: keep it on a trusted network)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                   help="served dtype; auto as rollout.dtype: auto resolves (bf16 where native, else fp32)")
    s.add_argument("--kv-gib", type=int, default=2, help="CPU: KV cache in whole GiB (VLLM_CPU_KVCACHE_SPACE)")
    s.add_argument("--max-model-len", type=int, default=1024, help="at least the run's rollout.max_model_len")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--served-model-name", default=None, help="name in /v1/models (default: MODEL as given)")
    s.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=None,
                   help="no graph compilation (default: on for CPU, off for GPU)")
    s.add_argument("--start-timeout", type=float, default=900.0, help="seconds to wait for /health")
    s.add_argument("--dry-run", action="store_true", help="print the command and exit")
    # after `--`: more vLLM server arguments, passed as they are (split off in main)
    s.set_defaults(fn=_cmd_serve)

    r = sub.add_parser("report", help="write an HTML report (+ PNGs) of a run directory")
    r.add_argument("run_dir")
    r.add_argument("--out", help="output directory (default: RUN_DIR/report)")
    r.set_defaults(fn=_cmd_report)

    b = sub.add_parser("bench", help="run a benchmark script from bench/")
    b.add_argument("name")
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(fn=_cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    rest: list[str] = []
    if argv[:1] == ["serve"] and "--" in argv:  # rlkit serve MODEL [options] -- [vLLM server arguments]
        cut = argv.index("--")
        argv, rest = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    args.vllm_args = rest
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
