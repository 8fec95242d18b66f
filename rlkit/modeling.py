"""Model plumbing shared by the trainer and the rollout engines: unwrapping and ZeRO-3 gathers.

One place for each job, so the weight sync, the export and the engines agree on what "the
model" is and on when a parameter must be gathered.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from torch import nn

__all__ = ["gathered", "is_zero3", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DeepSpeed/DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        inner = getattr(model, "module", None)
        if isinstance(inner, nn.Module):
            model = inner
            continue
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
            continue
        return model


def is_zero3(model: nn.Module) -> bool:
    """True when DeepSpeed ZeRO-3 partitions the model's parameters (they carry `ds_id`)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


@contextlib.contextmanager
def gathered(params: Iterable[nn.Parameter]) -> Iterator[None]:
    """Full values of `params` for reading inside the block, also under ZeRO-3 partitioning.

    Only partitioned parameters (`ds_status` NOT_AVAILABLE) are gathered: one already gathered
    by an enclosing block is left alone, since gathering it again would re-partition it on
    exit, under the outer block's feet. Outside ZeRO-3 this is a no-op. Collective: under
    ZeRO-3 every rank must enter the block with the same parameters.
    """
    todo = [p for p in params if hasattr(p, "ds_id")
            and getattr(getattr(p, "ds_status", None), "name", "") == "NOT_AVAILABLE"]
    if not todo:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(todo, modifier_rank=None):
        yield
