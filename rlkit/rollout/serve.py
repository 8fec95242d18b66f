"""Start, wait for and stop a vLLM OpenAI-compatible server with the settings rollouts need.

`rlkit serve` and the tests use this. It is a thin convenience over vLLM's own server: the
command it runs is printed (`server_command`), and the same server can be started by hand:

    VLLM_SERVER_DEV_MODE=1 VLLM_CPU_KVCACHE_SPACE=2 \\
    python -m vllm.entrypoints.openai.api_server --model DIR --served-model-name NAME \\
        --host 127.0.0.1 --port 8000 --dtype bfloat16 --max-model-len 1024 --seed 0 \\
        --logprobs-mode processed_logprobs --enforce-eager \\
        --worker-extension-cls rlkit.rollout.server_worker.WorkerExtension

- `VLLM_SERVER_DEV_MODE=1`: the dev routes (`/collective_rpc`, `/reset_prefix_cache`,
  `/server_info`) and vLLM's RL routes, which the weight sync uses. They let any client
  change the served weights: bind to a trusted interface (127.0.0.1 by default).
- `--logprobs-mode processed_logprobs`: logprobs of the distribution tokens were drawn from
  (docs/rollout.md, "Which logprobs the engine returns").
- The model's generation_config.json stays on (vLLM takes extra EOS ids from it, as the
  in-process engine does); its sampling defaults do not matter, as ServerEngine sends every
  sampling knob explicitly.
- `--worker-extension-cls ...`: rlkit's worker methods (the tied-lm_head fix-up after a
  reload on CPU, `rlkit/rollout/server_worker.py`); needs rlkit importable by the server.
- CPU: `VLLM_CPU_KVCACHE_SPACE` (whole GiB) and `--enforce-eager` (starts in ~25 s instead
  of minutes of compilation).
- `python -m vllm.entrypoints.openai.api_server` rather than `vllm serve`: the `vllm serve`
  entry point fails under vllm-cpu (`PackageNotFoundError: No package metadata was found
  for vllm`, the distribution is named vllm-cpu); on a GPU build both work.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from rlkit.rollout.server_worker import EXTENSION

__all__ = ["ServerProcess", "free_port", "server_command", "start_server"]

_RLKIT_ROOT = Path(__file__).resolve().parents[2]  # the directory holding the rlkit package


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def server_command(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    dtype: str = "auto",
    max_model_len: int = 1024,
    seed: int = 0,
    served_model_name: str | None = None,
    kv_gib: int = 2,
    enforce_eager: bool | None = None,
    on_gpu: bool | None = None,
    extra_args: list[str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """(argv, extra environment) of the vLLM server for `model` (a local directory or hub id).

    `dtype` auto: bf16 where the machine has it natively, else fp32 (`rlkit.platform`), as
    `rollout.dtype: auto` resolves. `enforce_eager` None: on for CPU, off for GPU."""
    from rlkit.platform import resolve_dtype

    if on_gpu is None:
        import torch

        on_gpu = torch.cuda.is_available()
    if enforce_eager is None:
        enforce_eager = not on_gpu
    argv = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model), "--served-model-name", served_model_name or str(model),
        "--host", host, "--port", str(port), "--dtype", resolve_dtype(dtype),
        "--max-model-len", str(max_model_len), "--seed", str(seed),
        "--logprobs-mode", "processed_logprobs",
        "--worker-extension-cls", EXTENSION,
    ]
    if enforce_eager:
        argv.append("--enforce-eager")
    argv += list(extra_args or [])
    env = {"VLLM_SERVER_DEV_MODE": "1"}
    if not on_gpu:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(int(kv_gib))
    return argv, env


def shell_command(argv: list[str], env: dict[str, str]) -> str:
    """The command line a user can paste (environment first)."""
    return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()), *map(shlex.quote, argv)])


@dataclass
class ServerProcess:
    """A vLLM server this process started (its own process group) and how to reach it."""

    url: str
    proc: subprocess.Popen
    command: str
    log_path: Path | None = None
    _log: IO | None = field(default=None, repr=False)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def wait_healthy(self, timeout_s: float = 600.0) -> None:
        """Poll GET /health until it answers 200; RuntimeError (with the log's tail) when the
        server exits first or `timeout_s` passes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"vLLM server for {self.url} exited with status {self.proc.returncode} before "
                                   f"it was healthy. Command: {self.command}\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"vLLM server {self.url} not healthy after {timeout_s:.0f} s; stopped it. "
                           f"Command: {self.command}\n{self.log_tail()}")

    def stop(self, grace_s: float = 30.0) -> int | None:
        """SIGTERM to the server's process group (the API server and its engine-core
        process), SIGKILL after `grace_s`; returns the exit status."""
        if self.alive():
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode


def start_server(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    log_path: str | Path | None = None,
    **settings,
) -> ServerProcess:
    """Start the server (`server_command`) in its own process group and return at once
    (call `wait_healthy`). Output goes to `log_path`, else to this process's stdout/stderr.
    Port None: a free one."""
    port = free_port(host) if port is None else port
    argv, extra_env = server_command(model, host=host, port=port, **settings)
    env = dict(os.environ)
    env.update(extra_env)
    # In-process settings meant for rlkit's own engine would change how the server runs.
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    env.pop("VLLM_CONFIGURE_LOGGING", None)
    # The worker extension is imported by the server's worker process.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_RLKIT_ROOT), env.get("PYTHONPATH")) if p)
    log_file = None
    if log_path is not None:
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = open(log_path, "w")  # noqa: SIM115 - closed by ServerProcess.stop
    proc = subprocess.Popen(argv, env=env, stdout=log_file, stderr=subprocess.STDOUT if log_file else None,
                            start_new_session=True)
    return ServerProcess(url=f"http://{host}:{port}", proc=proc, command=shell_command(argv, extra_env),
                         log_path=log_path, _log=log_file)
