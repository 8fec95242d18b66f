"""`RolloutEngine` on `transformers.generate`: the fallback without vLLM and the test reference.

Getting the logprob of each sampled token under the *processed* distribution (logits / T,
then top-k / top-p) out of `generate` is less direct than it looks:

- `output_scores=True` keeps a [N, V] fp32 tensor per step: 64 rows x 64 steps x 49k vocab is
  0.8 GB for one rollout, and it costs throughput.
- a user `logits_processor` is inserted *before* the temperature / top-k / top-p warpers
  (`_merge_criteria_processor_list`), so it never sees the processed scores;
- stopping criteria receive the stored `scores` tuple, not the current step's.

So this engine owns the sampling step. `_Sampler`, a logits processor, applies temperature,
top-k and top-p itself (with transformers' own warper classes, so the semantics are HF's),
draws the token, records its logprob, and
returns scores that are 0 at that token and -inf elsewhere; `generate` runs with
`do_sample=False` and its argmax picks exactly the drawn token. Memory stays O(N * V).

Randomness: like the in-process vLLM engine (whose CPU sampler draws its per-row seeds from
torch's global generator, seeded by `LLM(seed=...)`), this engine seeds the global generator
once at construction and samples from it, so the loop's per-step `torch.manual_seed` makes
both engines' samples a function of (seed, step).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rlkit.modeling import unwrap_model
from rlkit.rollout.engine import Prompt, pad_token_id, render_prompts
from rlkit.rollout.types import RolloutBatch, SamplingConfig

log = logging.getLogger(__name__)

__all__ = ["HFEngine"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class _Sampler:
    """Logits processor that samples (or argmaxes) and records the sampled token's logprob."""

    def __init__(self, sampling: SamplingConfig, generator: torch.Generator | None = None) -> None:
        from transformers.generation.logits_process import (
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        self.greedy = sampling.greedy
        self.generator = generator
        self.warpers: list[Any] = []
        if not self.greedy:
            if sampling.temperature != 1.0:
                self.warpers.append(TemperatureLogitsWarper(sampling.temperature))
            if sampling.top_k > 0:
                self.warpers.append(TopKLogitsWarper(top_k=sampling.top_k))
            if sampling.top_p < 1.0:
                self.warpers.append(TopPLogitsWarper(top_p=sampling.top_p))
        self.logprobs: list[Tensor] = []  # one [N] fp32 tensor per step

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        scores = scores.float()  # [N, V]
        for w in self.warpers:
            scores = w(input_ids, scores)
        logp = torch.log_softmax(scores, dim=-1)  # [N, V]
        if self.greedy:
            tok = scores.argmax(-1)  # [N]
        else:
            tok = torch.multinomial(logp.exp(), 1, generator=self.generator).squeeze(-1)  # [N]
        self.logprobs.append(logp.gather(-1, tok[:, None]).squeeze(-1))
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(-1, tok[:, None], 0.0)
        return out


class HFEngine:
    """`RolloutEngine` with `transformers.generate` (see the module docstring)."""

    def __init__(
        self,
        model: str | Path | nn.Module,
        *,
        dtype: str = "float32",
        seed: int = 0,
        chat_template: bool = True,
        device: str = "auto",
        tokenizer: Any = None,
    ) -> None:
        """`device`: "auto" = the current CUDA device when there is one (else the CPU) for a
        model loaded from a path, the model's own device for a module; or any torch device."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if isinstance(model, (str, Path)):
            if device == "auto":
                device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
            self.model = AutoModelForCausalLM.from_pretrained(str(model), dtype=_DTYPES[dtype])
            self.model.to(device)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(str(model))
        else:
            self.model = unwrap_model(model)
            if device == "auto":
                device = next(self.model.parameters()).device
            if tokenizer is None:
                tokenizer = AutoTokenizer.from_pretrained(self.model.config._name_or_path)
        self.model.eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.chat_template = chat_template
        self.pad_id = pad_token_id(tokenizer)
        eos = self.model.generation_config.eos_token_id
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.eos_ids: set[int] = set(eos if isinstance(eos, list) else [eos])
        torch.manual_seed(seed)  # as vLLM does at LLM(seed=...); see the module docstring
        self.sync_count = 0
        self.sync_seconds = 0.0
        self.last_generate_seconds = 0.0

    @torch.no_grad()
    def generate(
        self, prompts: Sequence[Prompt], group_size: int, sampling: SamplingConfig
    ) -> RolloutBatch:
        """B prompts x `group_size` samples -> `RolloutBatch` with N = B*G rows."""
        from transformers import GenerationConfig, LogitsProcessorList

        texts, ids = render_prompts(self.tokenizer, prompts, chat_template=self.chat_template)
        # Rows repeated group by group; left-padded so every row's last token is its prompt end.
        rows = [p for p in ids for _ in range(group_size)]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)  # [N, P]
        attn = torch.zeros((len(rows), width), dtype=torch.long)  # [N, P]
        for i, r in enumerate(rows):
            input_ids[i, width - len(r) :] = torch.as_tensor(r)
            attn[i, width - len(r) :] = 1
        sampler = _Sampler(sampling)
        config = GenerationConfig(
            do_sample=False,  # _Sampler draws the token; argmax of its one-hot scores picks it
            max_new_tokens=sampling.max_new_tokens,
            min_new_tokens=sampling.max_new_tokens if sampling.ignore_eos else None,
            eos_token_id=sorted(self.eos_ids),
            pad_token_id=self.pad_id,
            stop_strings=list(sampling.stop) or None,
            temperature=None,
            top_k=None,
            top_p=None,
        )
        t0 = time.perf_counter()
        seqs = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attn.to(self.device),
            generation_config=config,
            logits_processor=LogitsProcessorList([sampler]),
            tokenizer=self.tokenizer if sampling.stop else None,
        )
        self.last_generate_seconds = time.perf_counter() - t0
        gen = seqs[:, width:].cpu()  # [N, T']
        steps = gen.shape[1]
        step_lps = torch.stack(sampler.logprobs[:steps], dim=1).cpu()  # [N, T']

        row_ids, row_lps, row_texts, reasons = [], [], [], []
        for i in range(gen.shape[0]):
            toks = gen[i].tolist()
            k, reason = self._finish(toks, sampling)
            row_ids.append(toks[:k])
            row_lps.append(step_lps[i, :k].tolist())
            text = self.tokenizer.decode(toks[:k], skip_special_tokens=True)
            row_texts.append(_cut_at_stop(text, sampling.stop))
            reasons.append(reason)
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

    @torch.no_grad()
    def score(self, prompt_ids: Sequence[list[int]], completion_ids: Sequence[list[int]]) -> list[list[float]]:
        """Logprob (temperature 1) of each completion token after its prompt and the tokens
        before it, under the engine's current weights (one plain forward per row)."""
        rows = []
        for p, c in zip(prompt_ids, completion_ids, strict=True):
            ids = torch.tensor([list(p) + list(c)], device=self.device)
            logp = torch.log_softmax(self.model(input_ids=ids).logits.float()[0], -1)  # [L, V]
            rows.append([float(logp[len(p) + t - 1, tok]) for t, tok in enumerate(c)])
        return rows

    def _finish(self, toks: list[int], sampling: SamplingConfig) -> tuple[int, str]:
        """(generated length, finish reason) of one row.

        Rows that finished early are padded with `pad_id`, which for many chat models *is* the
        EOS id, so padding cannot be told from tokens; instead we find the first EOS and the
        first token completing a stop string (binary search on the decoded prefix: "contains
        a stop string" is monotone in the prefix length) and take the earlier one.
        """
        end = len(toks)
        reason = "length" if end >= sampling.max_new_tokens else "abort"
        if not sampling.ignore_eos:
            for j, t in enumerate(toks):
                if t in self.eos_ids:
                    end, reason = j + 1, "stop"
                    break
        if sampling.stop:
            def hit(k: int) -> bool:
                text = self.tokenizer.decode(toks[:k], skip_special_tokens=True)
                return any(s in text for s in sampling.stop)

            if hit(end):
                lo, hi = 1, end  # smallest k in [1, end] with hit(k)
                while lo < hi:
                    mid = (lo + hi) // 2
                    if hit(mid):
                        hi = mid
                    else:
                        lo = mid + 1
                end, reason = lo, "stop"
        return end, reason

    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, Tensor]]) -> None:
        """Copy HF-named tensors into the model (names as `trainer_weights_for_engine` yields)."""
        t0 = time.perf_counter()
        params = dict(self.model.named_parameters())
        for name, tensor in named_tensors:
            if name not in params:
                raise KeyError(f"engine model has no parameter {name!r}")
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))
        dt = time.perf_counter() - t0
        self.sync_count += 1
        self.sync_seconds += dt
        log.info("weight sync #%d into HF engine took %.2f s", self.sync_count, dt)

    @torch.no_grad()
    def max_weight_diff(self, named_tensors: Iterable[tuple[str, Tensor]]) -> float:
        """Max |engine weight - given weight| (cast to the engine's dtype) over the given names."""
        params = dict(self.model.named_parameters())
        worst, compared = 0.0, 0
        for name, tensor in named_tensors:
            if name in params:
                mine = params[name]
                worst = max(worst, float((mine.float() - tensor.to(mine.device, mine.dtype).float()).abs().max()))
                compared += 1
        return worst if compared else float("nan")

    def close(self) -> None:
        """Drop the model."""
        self.model = None


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """Text before the earliest stop string (vLLM's `include_stop_str_in_output=False`)."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]
