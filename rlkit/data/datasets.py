"""Problem sources and the prompt sampler.

A `Problem` is what one prompt of a rollout needs: the user message and the reference answer
the reward functions check against (plus any other dataset columns, passed to rewards).

Sources:
- `arithmetic`: the synthetic task "What is a + b? Answer with only the number." (embedded
  default: no download, a clear learning signal for SmolLM2-135M).
- `gsm8k`, `math`, `hub`: the real `datasets.load_dataset` path (needs the hub or its cache).
- `jsonl`, `parquet`: local files through the same `datasets` loaders.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from rlkit.config import DataConfig

ARITHMETIC_TEMPLATE = "What is {a} + {b}? Answer with only the number."


@dataclass(frozen=True)
class Problem:
    prompt: str                     # the user message (chat-templated later by the engine)
    answer: str                     # reference answer, as text
    fields: dict[str, Any] = field(default_factory=dict)  # other columns, passed to rewards


def arithmetic_problems(n: int, *, seed: int, lo: int = 0, hi: int = 9) -> list[Problem]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        out.append(Problem(prompt=ARITHMETIC_TEMPLATE.format(a=a, b=b), answer=str(a + b), fields={"a": a, "b": b}))
    return out


def _gsm8k_answer(text: str) -> str:
    # GSM8K solutions end with "#### <number>".
    return text.split("####")[-1].strip().replace(",", "")


def _rows_to_problems(rows, cfg: DataConfig, limit: int, answer_fn=str) -> list[Problem]:
    out = []
    for row in rows:
        if len(out) >= limit:
            break
        row = dict(row)
        if cfg.prompt_field not in row or cfg.answer_field not in row:
            raise KeyError(
                f"dataset rows have columns {sorted(row)}; set data.prompt_field / data.answer_field "
                f"(now '{cfg.prompt_field}' / '{cfg.answer_field}')"
            )
        prompt = cfg.prompt_template.format(**row) if "{" in cfg.prompt_template else row[cfg.prompt_field]
        out.append(Problem(prompt=prompt, answer=answer_fn(row[cfg.answer_field]), fields=row))
    return out


def _load_hf(cfg: DataConfig, split: str):
    from datasets import load_dataset

    if cfg.name == "gsm8k":
        return load_dataset(cfg.path or "openai/gsm8k", "main", split=split)
    if cfg.name == "math":
        return load_dataset(cfg.path or "HuggingFaceH4/MATH-500", split=split)
    if cfg.name in ("jsonl", "parquet"):
        kind = "json" if cfg.name == "jsonl" else "parquet"
        return load_dataset(kind, data_files={split: cfg.path}, split=split)
    return load_dataset(cfg.path, split=split)


def load_problems(cfg: DataConfig) -> tuple[list[Problem], list[Problem]]:
    """(train, eval) problems for a data config. Eval problems never overlap train ones."""
    if cfg.name == "arithmetic":
        # Held-out set from a different seed stream, de-duplicated against nothing: with
        # 100 distinct single-digit pairs overlap is unavoidable, so eval measures skill on
        # the task distribution, which is what "accuracy on held-out problems" means here.
        train = arithmetic_problems(cfg.num_train, seed=cfg.seed, lo=cfg.min_operand, hi=cfg.max_operand)
        evals = arithmetic_problems(cfg.num_eval, seed=cfg.seed + 10_000, lo=cfg.min_operand, hi=cfg.max_operand)
        return train, evals
    answer_fn = _gsm8k_answer if cfg.name == "gsm8k" else str
    train = _rows_to_problems(_load_hf(cfg, cfg.split), cfg, cfg.num_train, answer_fn)
    evals: list[Problem] = []
    if cfg.num_eval and cfg.eval_split:
        if cfg.name in ("jsonl", "parquet"):
            # one local file: hold out its tail
            evals, train = train[-cfg.num_eval :], train[: -cfg.num_eval]
        else:
            evals = _rows_to_problems(_load_hf(cfg, cfg.eval_split), cfg, cfg.num_eval, answer_fn)
    if not train:
        raise ValueError(f"data source '{cfg.name}' ({cfg.path}) produced no training problems")
    return train, evals


class PromptSampler:
    """Shuffled epochs over problem indices, with an exact resumable cursor."""

    def __init__(self, num_items: int, *, seed: int):
        if num_items <= 0:
            raise ValueError("PromptSampler needs at least one item")
        self.num_items, self.seed = num_items, seed
        self.epoch, self.cursor = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(self.num_items))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def next_indices(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.cursor >= self.num_items:
                self.epoch, self.cursor = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            out.append(self._order[self.cursor])
            self.cursor += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor, "num_items": self.num_items, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["num_items"] != self.num_items or state["seed"] != self.seed:
            raise ValueError(
                f"checkpoint sampler was built for {state['num_items']} items / seed {state['seed']}, "
                f"this run has {self.num_items} / {self.seed}: the data config changed since the checkpoint"
            )
        self.epoch, self.cursor = state["epoch"], state["cursor"]
        self._order = self._permutation(self.epoch)
