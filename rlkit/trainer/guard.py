"""Process safety of a run: one writer per run directory, no orphan workers, test kill points.

- `RunLock`: a run holds an exclusive lock on its output directory for its whole life
  (a POSIX record lock, `fcntl.lockf`, on `RUN_DIR/.rlkit.lock`, with the holder's pid, host
  and start time written in the file; a record lock belongs to the process, so children it
  forks do not keep it alive). A second run into the same directory while the first lives is refused with a
  message naming the holder. The kernel drops the lock when the holder dies, however it dies,
  so a stale lock from a dead process is simply taken over.
- `die_with_parent`: a worker started by `accelerate launch` / torchrun runs in a session of
  its own, so a SIGKILL to the launcher's process group does not reach it; without this it
  keeps training and writing into the run directory. Linux's parent-death signal makes the
  kernel SIGKILL the worker when its launcher dies.
- `kill_point`: test-only hooks. With `RLKIT_KILL_AT=<name>` or `<name>@<step>` in the
  environment, the process SIGKILLs itself when it reaches that point (at that step), so a
  test can cut a run at an exact place without sleeps. Unset (always, outside tests), each
  hook is one dictionary lookup. The points are listed in `KILL_POINTS` and docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

__all__ = ["KILL_POINTS", "RunLock", "RunLockedError", "die_with_parent", "kill_point", "set_step", "test_hook"]

KILL_POINTS = (
    "eval_step0",        # inside the step-0 held-out evaluation
    "generate",          # right after the step's rollouts are generated, before scoring
    "backward",          # after the first micro-batch's backward of the step
    "before_optimizer",  # all micro-batches backpropagated, the optimizer step not yet taken
    "weight_sync",       # inside the weight sync, before the engine has the new weights
    "checkpoint_write",  # checkpoint files written into the temp directory, not renamed
    "checkpoint_renamed",  # right after the checkpoint's rename, before old ones are pruned
    "export",            # final_model/ written into its temp directory, not renamed
)

_KILL_AT = os.environ.get("RLKIT_KILL_AT")
_STEP: list[int | None] = [None]  # the training step in progress (set by the recipe)


def set_step(step: int | None) -> None:
    """Record the step in progress, for hooks reached where the step is not passed down."""
    _STEP[0] = step


def kill_point(name: str, step: int | None = None) -> None:
    """SIGKILL this process here if RLKIT_KILL_AT names this point (and step). Test-only."""
    if _KILL_AT is None:
        return
    step = _STEP[0] if step is None else step
    want, _, at = _KILL_AT.partition("@")
    if want == name and (not at or step == int(at)):
        sys.stderr.write(f"[rlkit] RLKIT_KILL_AT={_KILL_AT}: SIGKILL at {name} step {step}\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def test_hook(name: str, step: int | None = None) -> bool:
    """True when the test-only environment variable RLKIT_TEST_<NAME> names this step
    (e.g. RLKIT_TEST_SKIP_SYNC=3: the weight sync of step 3 is silently skipped, so the
    canary's test can check that it notices; RLKIT_TEST_NAN_LOSS=2: step 2's loss is NaN)."""
    value = os.environ.get(f"RLKIT_TEST_{name.upper()}")
    step = _STEP[0] if step is None else step
    return value is not None and step is not None and step in {int(x) for x in value.split(",")}


class RunLockedError(RuntimeError):
    """Another live run holds the run directory."""


class RunLock:
    """Exclusive lock on a run directory, held until `release()` or process exit."""

    NAME = ".rlkit.lock"

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / self.NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # a POSIX record lock, owned by this process: unlike flock it is not inherited by
            # children the run forks (compile workers, ...), so it goes when the run goes
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = self._read(fd)
            os.close(fd)
            who = (f"pid {holder.get('pid')} on host {holder.get('host')}, since "
                   f"{holder.get('started', '?')}") if holder else "another process"
            raise RunLockedError(
                f"run.output_dir {self.path.parent} is in use by a live run ({who}); two runs writing one "
                "directory would interleave their logs and checkpoints. Wait for it to end (or stop it), "
                "or set another run.output_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    @staticmethod
    def _read(fd: int) -> dict:
        with contextlib.suppress(OSError, ValueError):
            os.lseek(fd, 0, os.SEEK_SET)
            return json.loads(os.read(fd, 4096).decode() or "{}")
        return {}

    def holder(self) -> dict:
        """What the lock file says (pid, host, started); {} when absent or unreadable. Read it
        from another process: closing any descriptor of the file drops a POSIX lock held by
        the reading process itself."""
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send `sig` to this process when its parent dies (Linux
    PR_SET_PDEATHSIG). Returns False where unavailable. If the parent is already gone (we
    were re-parented before the call), exits at once."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    if libc.prctl(pr_set_pdeathsig, int(sig), 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:  # the launcher died between fork and here
        os.kill(os.getpid(), sig)
    return True
