"""DeepSpeed (through accelerate) setup: the policy, its optimizer and schedule, LoRA, frozen models.

Precision: master weights and optimizer state stay fp32. On GPU, DeepSpeed's bf16 mode runs
the model in bf16. On CPU, DeepSpeed's bf16 path is not what makes things fast; rlkit keeps
the DeepSpeed engine in fp32 and, where the CPU has native bf16 (AVX512-BF16/AMX), wraps the
forward in `torch.autocast("cpu", bfloat16)` (about 2x faster there). On CPUs without it
(`dtype: auto` resolves to fp32, rlkit/platform.py) bf16 is emulated and slower than fp32.

Gradient accumulation: a mini-batch is split into a variable number of micro-batches (by
token budget), so the accumulation boundary is set by hand on the DeepSpeed engine
(`set_gradient_accumulation_boundary`) instead of a fixed `gradient_accumulation_steps`.
The loss of each micro-batch is pre-weighted by its share of the mini-batch, so the summed
gradient equals the gradient of the mini-batch loss.

ZeRO-Offload (`trainer.offload`): `optimizer` moves the fp32 master weights and the Adam state
of ZeRO's partitions to pinned CPU memory (`zero_optimization.offload_optimizer`), so the
optimizer step runs on the CPU; `optimizer_and_params` (ZeRO-3 only) also keeps the partitioned
parameters there between uses (`offload_param`). The step on the CPU is DeepSpeedCPUAdam
(DeepSpeed's vectorised CPU AdamW, built from C++ on first use), which rlkit constructs itself
under offload (`build_optimizer`) instead of torch's fused AdamW:
- DeepSpeed (0.19) refuses any other client optimizer with offload
  ("ZeRO-Offload with a client provided optimizer ... will yield poor performance") unless
  `zero_force_ds_cpu_optimizer: false`, and DeepSpeedCPUAdam is the optimizer its offload
  paths are built and tested for (ZeRO-3's `deepspeed_adam_offload` branch checks its type);
- left to itself, accelerate (1.16) swaps whatever optimizer it is given for a new
  DeepSpeedCPUAdam, with `adamw_mode=True` only when the original is a `torch.optim.AdamW`:
  handed a DeepSpeedCPUAdam it would rebuild it as L2-regularised Adam, a different update
  once weight_decay > 0. So `_ds_config` sets `zero_force_ds_cpu_optimizer: false` under
  offload, which stops that swap; DeepSpeed's own check passes since the optimizer is
  DeepSpeedCPUAdam.
Same hyperparameters either way: lr, betas, weight_decay, eps 1e-8 (torch's default), decoupled
weight decay (AdamW). The LR schedule is built on the optimizer DeepSpeed steps. Run here only
on CPU, one process, ZeRO-2 with `optimizer` (tests/recipes/test_offload.py: equals a step
without offload); not on a GPU, and `optimizer_and_params` not at all.
tests/unit/trainer/test_deepspeed_config.py checks the DeepSpeed dict and the config errors.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass

import torch

from rlkit.config import ConfigError, LoraConfig, ModelConfig, TrainerConfig
from rlkit.modeling import unwrap_model
from rlkit.platform import resolve_dtype

log = logging.getLogger(__name__)


@dataclass
class Policy:
    """The trainable model as the loop sees it."""

    accelerator: object              # accelerate.Accelerator
    model: torch.nn.Module           # the DeepSpeed-wrapped model
    optimizer: torch.optim.Optimizer
    scheduler: object
    autocast_dtype: torch.dtype | None  # CPU bf16 autocast, or None
    max_grad_norm: float | None = None

    def unwrapped(self) -> torch.nn.Module:
        """The plain transformers (or PEFT) model inside the DeepSpeed engine."""
        return unwrap_model(self.model)

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cpu", dtype=self.autocast_dtype)

    def backward(self, loss: torch.Tensor, *, boundary: bool, discard: bool = False) -> None:
        """Backward one micro-batch; the optimizer steps (and the LR schedule advances) only
        when `boundary` is True. `discard` (at a boundary) throws the accumulated gradients
        away instead: no optimizer step, no LR step, nothing carried into the next step (a
        step with a non-finite loss). Every rank must pass the same `discard`."""
        wrapped = getattr(self.accelerator, "deepspeed_engine_wrapped", None)
        if wrapped is not None:
            if not (boundary and discard):
                # engine.backward, then engine.step() (clip, AdamW, zero_grad, LR) at the boundary.
                wrapped.backward(loss, sync_gradients=boundary)
                return
            engine = wrapped.engine
            engine.set_gradient_accumulation_boundary(is_boundary=True)
            engine.backward(loss)  # ZeRO reduces here: every rank takes part
            _discard_gradients(engine.optimizer)
            return
        self.accelerator.backward(loss)
        if boundary and discard:
            self.optimizer.zero_grad(set_to_none=True)
            return
        if boundary:
            if self.max_grad_norm is not None:
                self.accelerator.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)

    def grad_norm(self) -> float:
        """Global gradient norm of the last optimizer step (0.0 is a real value: a fully
        saturated batch has no gradient); NaN where nothing reports one (no DeepSpeed)."""
        norm = self.model.get_global_grad_norm() if hasattr(self.model, "get_global_grad_norm") else None
        return float("nan") if norm is None else float(norm)

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


def _discard_gradients(optimizer) -> None:
    """Drop a DeepSpeed ZeRO optimizer's accumulated gradients without stepping: what its own
    overflow branch does for an fp16 overflow (param grads, the reduced partitions and their
    flat buffers). Checked by a test: the step after a discarded one equals a fresh step."""
    optimizer.zero_grad(set_to_none=True)
    for attr in ("averaged_gradients", "all_grad_tensors"):
        grads = getattr(optimizer, attr, None)
        if isinstance(grads, dict):
            for key in grads:
                grads[key] = None
    release = getattr(optimizer, "_release_preflattened_grad_buffers", None)
    if release is not None:
        release()
    if getattr(optimizer, "cpu_offload", False):
        # ZeRO-1/2 with trainer.offload: what its overflow branch and step() also reset. Left
        # as they are, the micro-step count stays above 0 and the next step's first backward
        # adds the discarded gradients kept in CPU buffers to its own (stage_1_and_2.py,
        # async_accumulate_grad_in_cpu_via_gpu).
        optimizer.reset_cpu_buffers()
        optimizer.micro_step_id = -1  # INITIAL_MICRO_STEP_ID
        optimizer._offload_accumulated_param_ids = set()


def _ds_config(tcfg: TrainerConfig, *, bf16: bool) -> dict:
    """The DeepSpeed config dict of a recipe's `trainer` section (the accelerate file only selects
    DeepSpeed; `build_accelerator`)."""
    cfg: dict = {
        "train_micro_batch_size_per_gpu": 1,  # rlkit batches by tokens itself; DeepSpeed needs a number
        "gradient_accumulation_steps": 1,     # boundaries are set by hand, see module docstring
        "zero_optimization": {"stage": tcfg.zero_stage},
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if tcfg.max_grad_norm is not None:
        cfg["gradient_clipping"] = tcfg.max_grad_norm
    if tcfg.zero_stage == 3:
        cfg["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
    if tcfg.offload != "none":  # the stage was checked at config load (TrainerConfig)
        cfg["zero_optimization"]["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if tcfg.offload == "optimizer_and_params":
            cfg["zero_optimization"]["offload_param"] = {"device": "cpu", "pin_memory": True}
        # build_optimizer passes DeepSpeedCPUAdam itself; this stops accelerate from rebuilding
        # it (as L2 Adam, see the module docstring).
        cfg["zero_force_ds_cpu_optimizer"] = False
    return cfg


def check_trainable_stage(tcfg: TrainerConfig) -> None:
    """ConfigError for a ZeRO stage rlkit's training pass cannot run yet (ZeRO-3), before any
    process group or model exists.

    ZeRO-3 keeps every parameter partitioned outside its module's forward, and rlkit's chunked
    logprob pass (`rlkit/trainer/logprobs.py`) multiplies the hidden states by the output
    layer's weight directly, never through that module: on a ZeRO-3 run the weight is an empty
    shard there (tried on CPU, one process, 2026-12-02: "size mismatch ... vec (0)"). Also
    found then: while a ZeRO-3 config is live, transformers partitions every
    `from_pretrained`, so the frozen reference model, the teacher and the transformers engine
    would load as empty shards too. Both need work before ZeRO-3 trains."""
    if tcfg.zero_stage == 3:
        raise ConfigError(
            "trainer.zero_stage: 3 does not train in rlkit yet (the chunked logprob pass reads the output layer's "
            "weight outside its module, where ZeRO-3 keeps it partitioned; docs/scaling.md, \"ZeRO-3\"); use "
            "trainer.zero_stage: 2, with trainer.offload: optimizer to move the optimizer state to CPU memory")


def build_accelerator(tcfg: TrainerConfig, mcfg: ModelConfig, trackers: list[str], project_dir: str):
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

    check_trainable_stage(tcfg)

    bf16 = resolve_dtype(mcfg.dtype) == "bfloat16" and torch.cuda.is_available()
    if not torch.cuda.is_available():
        # torchrun (under `accelerate launch`) sets OMP_NUM_THREADS=1 per process; on a CPU
        # machine that halves training speed. Give each local process its share of the cores.
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    # The recipe config owns every DeepSpeed setting; the `accelerate launch` config file only
    # selects DeepSpeed. Drop the launcher's list of fields it set (zero_stage, ...), which
    # accelerate would otherwise report as conflicting with the config dict built here.
    os.environ.pop("ACCELERATE_CONFIG_DS_FIELDS", None)
    plugin = DeepSpeedPlugin(hf_ds_config=_ds_config(tcfg, bf16=bf16))
    handlers = []
    if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # With DeepSpeed on CPU ranks accelerate picks no backend: DeepSpeed still forms the
        # N-rank group, but accelerate reports 1 process, rank 0, on every rank (each then
        # acts as the main process). Naming gloo makes it read the group's size and rank.
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    return Accelerator(
        deepspeed_plugin=plugin,
        log_with=trackers or None,
        project_dir=project_dir,
        kwargs_handlers=handlers,
    )


def load_causal_lm(path: str, *, dtype: torch.dtype = torch.float32, trainable: bool = True):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    if not trainable:
        model.eval().requires_grad_(False)
    return model


def load_teacher(path: str, policy: torch.nn.Module, policy_path: str):
    """A frozen teacher, loaded like the reference model, after checking that it speaks the
    policy's vocabulary: its logprobs are read at the student's sampled token ids, so both the
    output size and the tokenizer must agree (the message names both sizes)."""
    from transformers import AutoTokenizer



    teacher = load_causal_lm(path, trainable=False)
    t_size = teacher.get_output_embeddings().weight.shape[0]
    p_size = unwrap_model(policy).get_output_embeddings().weight.shape[0]
    t_vocab = AutoTokenizer.from_pretrained(path).get_vocab()
    p_vocab = AutoTokenizer.from_pretrained(policy_path).get_vocab()
    if t_size != p_size or t_vocab != p_vocab:
        raise ConfigError(
            f"model.teacher_model: the teacher's vocabulary ({t_size} output rows, {len(t_vocab)} tokenizer entries) "
            f"differs from the policy's ({p_size} output rows, {len(p_vocab)} tokenizer entries); a teacher must "
            "share the policy's tokenizer")
    return teacher


def apply_lora(model: torch.nn.Module, lcfg: LoraConfig) -> torch.nn.Module:
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model



    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    missing = sorted(set(lcfg.target_modules) - names)
    if missing:
        raise ConfigError(f"model.lora.target_modules: {missing} match no linear layer of this model; its linear "
                          f"layers are named {sorted(names)}")
    peft_cfg = PeftLoraConfig(
        r=lcfg.r, lora_alpha=lcfg.alpha, lora_dropout=lcfg.dropout,
        target_modules=lcfg.target_modules, task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_cfg)


def _lr_lambda(tcfg: TrainerConfig):
    warm, total, kind = tcfg.warmup_steps, tcfg.max_steps, tcfg.lr_schedule

    def fn(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total - warm))
        if kind == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return fn


def build_optimizer(params: list[torch.nn.Parameter], tcfg: TrainerConfig) -> torch.optim.Optimizer:
    """AdamW over `params`: torch's fused AdamW, or DeepSpeedCPUAdam in AdamW mode under
    `trainer.offload` (why: module docstring). Same lr, betas, weight decay and eps (1e-8)."""
    if tcfg.offload != "none":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(params, lr=tcfg.learning_rate, betas=tcfg.adam_betas, eps=1e-8,
                                weight_decay=tcfg.weight_decay, adamw_mode=True)
    return torch.optim.AdamW(
        params, lr=tcfg.learning_rate, betas=tcfg.adam_betas, eps=1e-8, weight_decay=tcfg.weight_decay,
        # One fused kernel per tensor (CPU and CUDA): ZeRO hands AdamW one flat fp32 partition,
        # and the plain loop's ten full-size elementwise passes over it took 1.06 s per step
        # for SmolLM2-135M on 2 cores against 0.06 s fused (BENCHMARKS.md, "Where a step's
        # time goes"). Deterministic, so a resumed run stays bitwise equal to a straight one.
        fused=True,
    )


def build_policy(accelerator, model_path: str, mcfg: ModelConfig, tcfg: TrainerConfig) -> Policy:
    """Load the policy, wrap it (LoRA, DeepSpeed) and build AdamW + LR schedule."""
    model = load_causal_lm(model_path)
    if mcfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if mcfg.lora is not None:
        model = apply_lora(model, mcfg.lora)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, tcfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(tcfg))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    on_cpu = not torch.cuda.is_available()
    autocast = torch.bfloat16 if (on_cpu and resolve_dtype(mcfg.dtype) == "bfloat16") else None
    n_train = sum(p.numel() for p in params)
    log.info("policy: %s | trainable params %.1fM | ZeRO-%d | offload %s | autocast %s",
             model_path, n_train / 1e6, tcfg.zero_stage, tcfg.offload, autocast)
    return Policy(accelerator, model, optimizer, scheduler, autocast, tcfg.max_grad_norm)
