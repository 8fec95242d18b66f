"""Atomic checkpoints, exact resume, keep-last-k, and the final model export.

A checkpoint is a directory `RUN_DIR/checkpoints/step-000012/` holding
- the accelerate/DeepSpeed state (model or adapter, optimizer, LR schedule, RNG states of
  python, numpy and torch) written by `accelerator.save_state`,
- `trainer_state.json`: step, data-sampler cursor, alarm-monitor state, anything else the
  loop hands in.
It is written into a hidden temp directory, every file fsync'ed, then renamed into place:
a crash mid-save leaves the previous checkpoint as the newest complete one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from rlkit.trainer.guard import kill_point

log = logging.getLogger(__name__)

_STATE = "trainer_state.json"


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a directory without trainer_state.json is ignored)."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step-*") if (p / _STATE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(accelerator, run_dir: Path, step: int, state: dict, *, keep_last: int) -> Path:
    """Write a complete checkpoint for `step` atomically; prune to the newest `keep_last`."""
    root = checkpoints_dir(run_dir)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))  # every rank writes its DeepSpeed shards
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (tmp / _STATE).write_text(json.dumps({"step": step, **state}, indent=2))
            _fsync_tree(tmp)
    except OSError:
        if accelerator.is_main_process:  # a full disk: drop the partial copy, keep the previous checkpoint
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if accelerator.is_main_process:
        kill_point("checkpoint_write", step)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        kill_point("checkpoint_renamed", step)
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        log.info("checkpoint saved: %s", final)
    accelerator.wait_for_everyone()
    return final


def set_aside(accelerator, path: Path) -> Path:
    """Move an unreadable checkpoint out of the way (kept for inspection, never loaded again)."""
    dest = path.with_name(f".corrupt-{path.name}")
    if accelerator.is_main_process:
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(path, dest)
    accelerator.wait_for_everyone()
    return dest


def load_checkpoint(accelerator, path: Path) -> dict:
    """Restore model/optimizer/schedule/RNG from `path`; returns its trainer_state dict."""
    accelerator.load_state(str(path))
    state = json.loads((Path(path) / _STATE).read_text())
    log.info("resumed from %s (step %d)", path, state["step"])
    return state


def export_model(policy, tokenizer, out_dir: Path, *, merge_lora: bool = True) -> Path:
    """A plain transformers directory of the trained policy (LoRA merged when asked)."""
    from rlkit.modeling import gathered

    accelerator = policy.accelerator
    model = policy.unwrapped()
    out_dir = Path(out_dir)
    with gathered(model.parameters()):
        if accelerator.is_main_process:
            tmp = out_dir.with_name(f".tmp-{out_dir.name}")
            if tmp.exists():
                shutil.rmtree(tmp)
            to_save = model
            if merge_lora and hasattr(model, "merge_and_unload"):
                import copy

                to_save = copy.deepcopy(model).merge_and_unload()
            to_save.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            _fsync_tree(tmp)
            kill_point("export")
            if out_dir.exists():
                shutil.rmtree(out_dir)
            os.replace(tmp, out_dir)
            log.info("exported model to %s", out_dir)
    accelerator.wait_for_everyone()
    return out_dir
