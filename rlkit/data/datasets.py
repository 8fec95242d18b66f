"""Problem sources and the prompt sampler.

A `Problem` is what one prompt of a rollout needs: the user message and the reference answer
the reward functions check against (plus any other dataset columns, passed to rewards).

Sources:
- `arithmetic`: the synthetic task "What is a + b? Answer with only the number." (embedded
  default: no download, a clear learning signal for SmolLM2-135M); harder with more operands
  and '-' / '*' ("What is 23 + 7 * 4? Answer with only the number.").
- `gsm8k`, `math`, `hub`: the real `datasets.load_dataset` path (needs the hub or its cache).
- `jsonl`, `parquet`: local files through the same `datasets` loaders.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlkit.config import DataConfig

ARITHMETIC_TEMPLATE = "What is {a} + {b}? Answer with only the number."
EXPRESSION_TEMPLATE = "What is {expression}? Answer with only the number."  # the general form of the above
log = logging.getLogger(__name__)

OPERAND_NAMES = "abcdefghijklmnopqrstuvwxyz"  # fields holding the operands, named as in the template


@dataclass(frozen=True)
class Problem:
    prompt: str                     # the user message (chat-templated later by the engine)
    answer: str                     # reference answer, as text
    fields: dict[str, Any] = field(default_factory=dict)  # other columns, passed to rewards


def expression_value(terms: Sequence[int], ops: Sequence[str]) -> int:
    """`terms[0] ops[0] terms[1] ...` with the usual precedence: '*' binds first, then '+' and
    '-' left to right. No eval(): the running product joins the sum at each '+' or '-'."""
    total, sign, product = 0, 1, terms[0]
    for op, x in zip(ops, terms[1:], strict=True):
        if op == "*":
            product *= x
        else:
            total, sign, product = total + sign * product, (1 if op == "+" else -1), x
    return total + sign * product


def arithmetic_problems(n: int, *, seed: int, lo: int = 0, hi: int = 9, num_terms: int = 2,
                        operations: Sequence[str] = ("+",)) -> list[Problem]:
    """n problems "What is a + b? ..." (defaults), or with `num_terms` operands in [lo, hi] and
    operators drawn uniformly from `operations`, e.g. "What is 23 + 7 * 4? ...".

    Per problem the operands are drawn first, then the operators; with one operation none is
    drawn, so the default random stream, and its problems, are those of the two-operand sum."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        terms = [rng.randint(lo, hi) for _ in range(num_terms)]
        if len(operations) > 1:
            ops = [rng.choice(operations) for _ in range(num_terms - 1)]
        else:
            ops = [operations[0]] * (num_terms - 1)
        expression = " ".join([str(terms[0])] + [f"{op} {x}" for op, x in zip(ops, terms[1:], strict=True)])
        answer = str(expression_value(terms, ops))
        # `demo`: the demonstration a mixing mode learns from (data.demo_field: demo), the bare
        # answer, as the prompt asks for
        out.append(Problem(prompt=EXPRESSION_TEMPLATE.format(expression=expression), answer=answer,
                           fields={**dict(zip(OPERAND_NAMES, terms, strict=False)), "demo": answer}))
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
        if row[cfg.answer_field] is None or str(row[cfg.answer_field]).strip() == "":
            raise ValueError(f"data: row {len(out)} has no answer in column '{cfg.answer_field}'; every training "
                             "problem needs one (numbers and strings are both fine)")
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
        task = dict(lo=cfg.min_operand, hi=cfg.max_operand, num_terms=cfg.num_terms, operations=cfg.operations)
        train = arithmetic_problems(cfg.num_train, seed=cfg.seed, **task)
        evals = arithmetic_problems(cfg.num_eval, seed=cfg.seed + 10_000, **task)
        return train, evals
    answer_fn = _gsm8k_answer if cfg.name == "gsm8k" else str
    if cfg.name in ("jsonl", "parquet") and Path(cfg.path).expanduser().stat().st_size == 0:
        raise ValueError(f"data.path: {cfg.path} is empty (no rows to train on)")
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


def drop_long_prompts(problems: list[Problem], tokenizer, chat_template: bool, max_tokens: int,
                      what: str) -> list[Problem]:
    """The problems whose rendered prompt has at most `max_tokens` tokens; the dropped ones are
    counted in a warning (a prompt the engine cannot fit would otherwise fail mid-run)."""
    from rlkit.rollout.engine import render_prompts

    if not problems:
        return problems
    _, ids = render_prompts(tokenizer, [p.prompt for p in problems], chat_template=chat_template)
    kept = [p for p, i in zip(problems, ids, strict=True) if len(i) <= max_tokens]
    if len(kept) < len(problems):
        log.warning("dropped %d of %d %s prompts longer than %d tokens (rollout.max_model_len - max_new_tokens)",
                    len(problems) - len(kept), len(problems), what, max_tokens)
    return kept
