"""Trainer model -> (HF checkpoint name, tensor) pairs that a rollout engine can load.

vLLM's `reload_weights` runs the model's checkpoint loader, so it wants the names of a plain
Hugging Face checkpoint (`model.layers.0.self_attn.q_proj.weight`). The trainer's model is
often none of that:

- wrapped by DeepSpeed / DDP (`.module`) or `torch.compile` (`._orig_mod`): unwrapped;
- a PEFT LoRA model: names carry `base_model.model.` and `.base_layer`, and the engine has
  no adapter. We yield *merged* weights, W + scaling * B @ A, computed per layer on the fly
  (PEFT's own `get_delta_weight`, which knows fan_in_fan_out), so the trainer's adapter stays
  unmerged and at most one merged matrix exists at a time. `lora_*` tensors are skipped;
  `modules_to_save` copies of the active adapter replace the originals;
- under DeepSpeed ZeRO-3 each parameter is a shard: it is gathered per module with
  `deepspeed.zero.GatheredParameters` and cloned before the shard is released. Every rank must
  consume the iterator (the gathers are collective).

Tied weights (lm_head = embed_tokens) are yielded once; vLLM re-ties them.

The trainer keeps fp32 master weights; an engine serving bf16 would cast each one on load
anyway, but vLLM's loader logs a warning per tensor when the dtypes differ ("Attempted to load
weight ... with dtype torch.float32 into parameter with dtype torch.bfloat16"): hundreds of
lines per sync. `cast_weights` casts each tensor to the engine's dtype first, one at a time,
which also halves the bytes pushed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from rlkit.modeling import gathered, is_zero3, unwrap_model

log = logging.getLogger(__name__)

__all__ = ["trainer_weights_for_engine", "engine_name", "cast_weights"]

_PEFT_PREFIX = "base_model.model."


def engine_name(name: str) -> str:
    """PEFT parameter name -> HF checkpoint name (identity for plain models)."""
    if name.startswith(_PEFT_PREFIX):
        name = name[len(_PEFT_PREFIX) :]
    return name.replace(".base_layer.", ".")


def cast_weights(weights: Iterable[tuple[str, Tensor]], dtype: torch.dtype) -> Iterator[tuple[str, Tensor]]:
    """Yield `(name, tensor)` with every floating tensor cast to `dtype`, lazily.

    One tensor is cast when the consumer asks for it, so at most one cast copy exists at a
    time (never a second copy of the model). Tensors already in `dtype` pass through as they
    are (no copy); non-floating tensors (int buffers, bool masks) are never touched.
    """
    for name, tensor in weights:
        if tensor.is_floating_point() and tensor.dtype != dtype:
            tensor = tensor.to(dtype)
        yield name, tensor


def _is_lora_layer(module: nn.Module) -> bool:
    return hasattr(module, "lora_A") and hasattr(module, "get_base_layer") and hasattr(
        module, "get_delta_weight"
    )


def _is_modules_to_save(module: nn.Module) -> bool:
    return hasattr(module, "original_module") and hasattr(module, "modules_to_save")


def _merged_lora(module: nn.Module) -> tuple[Tensor, Tensor | None]:
    """(W + sum over active adapters of scaling * B @ A, merged bias) of one LoRA layer."""
    base = module.get_base_layer()
    weight = base.weight.detach()
    bias = base.bias.detach() if getattr(base, "bias", None) is not None else None
    if module.disable_adapters:
        return weight, bias
    merged_already = set(getattr(module, "merged_adapters", []))
    for adapter in module.active_adapters:
        if adapter not in module.lora_A.keys() or adapter in merged_already:
            continue
        if getattr(module, "use_dora", {}).get(adapter, False):
            raise NotImplementedError("weight sync of DoRA adapters is not supported")
        delta = module.get_delta_weight(adapter).detach()
        weight = weight + delta.to(weight.dtype)
        if getattr(module, "lora_bias", {}).get(adapter, False) and bias is not None:
            lora_b_bias = module.lora_B[adapter].bias.detach()
            bias = bias + (lora_b_bias * module.scaling[adapter]).to(bias.dtype)
    return weight, bias


@torch.no_grad()
def trainer_weights_for_engine(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """Yield `(hf_name, tensor)` for every weight the engine needs (see module docstring).

    Tensors are detached views of the trainer's parameters where possible (no copy), new
    tensors for merged LoRA weights, and clones under ZeRO-3. Consume the iterator promptly:
    it is meant to be fed straight into `engine.update_weights`.
    """
    model = unwrap_model(model)
    zero3 = is_zero3(model)
    seen: set[int] = set()  # id() of parameters already yielded (tied weights)
    skip_prefix: str | None = None  # subtree already handled (a LoRA layer / modules_to_save)
    for mod_name, module in model.named_modules():
        if skip_prefix is not None and mod_name.startswith(skip_prefix):
            continue
        skip_prefix = None
        if _is_lora_layer(module):
            skip_prefix = mod_name + "."
            with gathered(list(module.parameters())):
                weight, bias = _merged_lora(module)
                base = module.get_base_layer()
                if id(base.weight) not in seen:
                    seen.add(id(base.weight))
                    yield engine_name(f"{mod_name}.weight"), weight.clone() if zero3 else weight
                if bias is not None:
                    yield engine_name(f"{mod_name}.bias"), bias.clone() if zero3 else bias
            continue
        if _is_modules_to_save(module):
            skip_prefix = mod_name + "."
            active = [a for a in module.active_adapters if a in module.modules_to_save]
            source = module.modules_to_save[active[0]] if active and not getattr(
                module, "disable_adapters", False
            ) else module.original_module
            with gathered(list(source.parameters())):
                for pname, param in source.named_parameters():
                    if id(param) in seen:
                        continue
                    seen.add(id(param))
                    t = param.detach()
                    yield engine_name(f"{mod_name}.{pname}"), t.clone() if zero3 else t
            continue
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if id(p) not in seen]
        own = [(n, p) for n, p in own if not n.startswith("lora_")]
        if not own:
            continue
        with gathered([p for _, p in own]):
            for pname, param in own:
                seen.add(id(param))
                full = f"{mod_name}.{pname}" if mod_name else pname
                t = param.detach()
                yield engine_name(full), t.clone() if zero3 else t
