"""Problem sources, prompt-length filters and the prompt sampler.

A `Problem` is what one prompt of a rollout needs: the prompt (a user message, or a chat),
and the reference answer the reward functions check against (plus any other dataset
columns, passed to rewards).

Sources:
- `arithmetic`: the synthetic task "What is a + b? Answer with only the number." (embedded
  default: no download, a clear learning signal for SmolLM2-135M); harder with more operands
  and '-' / '*' ("What is 23 + 7 * 4? Answer with only the number.").
- `gsm8k`, `math`, `hub`: the real `datasets.load_dataset` path (needs the hub or its cache).
- `jsonl`, `parquet`: local files through the same `datasets` loaders.
- `reasoning_gym`: a procedurally generated reasoning-gym task (data.task, data.task_params),
  scored by the task's own verifier (rlkit/data/reasoning_gym.py, the `tasks` extra).

Rows are text (data.prompt_field / data.prompt_template) or chats (data.messages_field);
the reference answer is read with an answer format (raw, gsm8k '####', MATH's last
\\boxed{}). docs/data.md describes each with examples; every mismatch between the data and
the config is a `DataError` naming the field to set (and the row, where one is at fault).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlkit.config import ConfigError, DataConfig

if TYPE_CHECKING:
    from rlkit.rollout.engine import Prompt

ARITHMETIC_TEMPLATE = "What is {a} + {b}? Answer with only the number."
EXPRESSION_TEMPLATE = "What is {expression}? Answer with only the number."  # the general form of the above
log = logging.getLogger(__name__)

OPERAND_NAMES = "abcdefghijklmnopqrstuvwxyz"  # fields holding the operands, named as in the template


@dataclass(frozen=True)
class Problem:
    prompt: Prompt                  # a user message, or a chat ending with a user turn; the engine templates it
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


# ----------------------------------------------------------------------------- errors


class DataError(ConfigError):
    """The data does not fit the data config: a column, a row, a length. A ConfigError, so
    the recipe reports it like one (message verbatim, exit code 2); it names the field to set."""


class MissingColumnError(DataError, KeyError):
    """A configured column the rows do not have (also a KeyError, as it used to be)."""

    def __str__(self) -> str:  # KeyError would repr() the message; keep it readable
        return str(self.args[0]) if self.args else ""


# ----------------------------------------------------------------------------- answer formats


def raw_answer(text: str) -> str | None:
    """The column as it is; None when it is blank."""
    return text if text.strip() else None


def gsm8k_answer(text: str) -> str | None:
    """GSM8K solutions end with "#### <answer>": the text after the last '####', commas
    removed ("#### 1,234" -> "1234"); None when there is no '####' or nothing after it."""
    if "####" not in text:
        return None
    return text.rsplit("####", 1)[1].strip().replace(",", "") or None


_BOX_COMMANDS = ("\\boxed", "\\fbox")


def boxed_answer(text: str) -> str | None:
    """The content of the last \\boxed{...} (or \\fbox{...}) in `text`, braces matched with
    nesting ("\\boxed{\\frac{1}{2}}" -> "\\frac{1}{2}"); escaped braces (\\{ \\}) do not count.
    `\\boxed 5` (no braces, seen in MATH solutions) gives the token after the space. None when
    there is no box, it is empty, or its braces never close."""
    start = max(text.rfind(cmd) for cmd in _BOX_COMMANDS)
    if start < 0:
        return None
    cmd = next(c for c in _BOX_COMMANDS if text.startswith(c, start))
    rest = text[start + len(cmd):]
    body = rest.lstrip()
    if not body.startswith("{"):
        if rest[:1] != " ":  # `\boxedfoo`: not the command
            return None
        token = body.split("$", 1)[0].split()
        return token[0] if token else None
    depth, i = 0, 0
    while i < len(body):
        ch = body[i]
        if ch == "\\":  # an escaped character (\{, \}, \\): part of the content, never a brace
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return body[1:i].strip() or None
        i += 1
    return None


ANSWER_FORMATS: dict[str, Callable[[str], str | None]] = {
    "raw": raw_answer, "gsm8k": gsm8k_answer, "boxed": boxed_answer,
}
_FORMAT_HINTS = {"raw": "a non-blank value", "gsm8k": "a '#### <answer>' line", "boxed": "a \\boxed{...}"}


def answer_format_of(cfg: DataConfig) -> str:
    """data.answer_format, or its default for the source: gsm8k's solutions end in '####'."""
    return cfg.answer_format or ("gsm8k" if cfg.name == "gsm8k" else "raw")


# ----------------------------------------------------------------------------- chats


def split_chat(messages: Any, *, row: int, field: str) -> tuple[list[dict[str, str]], str | None]:
    """A chat row -> (prompt, reference): the prompt is the conversation up to and including its
    last user turn (system turns and earlier exchanges kept), the reference is the content of
    the final turn when it is an assistant turn after that user turn (a demonstration), else
    None. Other turns after the last user turn are dropped: the model writes the next one.

    Raises DataError naming the row and the field when the value is not a list of
    {role, content} messages with string contents, or has no user turn."""
    where = f"data.messages_field: row {row}, column '{field}'"
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where} holds {type(messages).__name__} {str(messages)[:80]!r}; a chat row is a non-empty "
                        "list of {role, content} messages")
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: message {j} is {str(m)[:80]!r}; each message needs a 'role' and a text "
                            "'content'")
    roles = [m["role"] for m in messages]
    if "user" not in roles:
        raise DataError(f"{where} has no user turn (roles: {roles}); the prompt ends with the last user message")
    last_user = len(roles) - 1 - roles[::-1].index("user")
    prompt = [{"role": m["role"], "content": m["content"]} for m in messages[: last_user + 1]]
    tail = messages[last_user + 1:]
    reference = tail[-1]["content"] if tail and tail[-1]["role"] == "assistant" else None
    return prompt, reference


def with_system_prompt(prompt: Prompt, system_prompt: str | None) -> Prompt:
    """`prompt` with `system_prompt` as its first message; a chat that opens with its own
    system turn keeps it (the row's instruction is the more specific one)."""
    if system_prompt is None:
        return prompt
    if isinstance(prompt, str):
        return [{"role": "system", "content": system_prompt}, {"role": "user", "content": prompt}]
    if prompt and prompt[0]["role"] == "system":
        return prompt
    return [{"role": "system", "content": system_prompt}, *prompt]


# ----------------------------------------------------------------------------- rows


def _missing_column(field: str, name: str, row: dict, extra: str = "") -> MissingColumnError:
    return MissingColumnError(
        f"{field}: the rows have no column '{name}'; dataset rows have columns {sorted(row)}; set {field} to one "
        f"of them{extra}"
    )


def row_to_problem(row: dict[str, Any], index: int, cfg: DataConfig, fmt: str) -> Problem:
    """One dataset row -> Problem (prompt from data.messages_field, data.prompt_template or
    data.prompt_field; answer from data.answer_field, or a chat's trailing assistant turn,
    read with the answer format `fmt`, a key of ANSWER_FORMATS). Every error names the row
    index and the field to set."""
    fields = dict(row)
    reference = None
    if cfg.messages_field is not None:
        if cfg.messages_field not in row:
            raise _missing_column("data.messages_field", cfg.messages_field, row)
        prompt: Prompt
        prompt, reference = split_chat(row[cfg.messages_field], row=index, field=cfg.messages_field)
        if reference is not None:
            fields.setdefault("demo", reference)  # a row's own `demo` column wins
    elif cfg.prompt_template is not None:
        try:
            prompt = cfg.prompt_template.format(**row)
        except KeyError as exc:
            raise MissingColumnError(
                f"data.prompt_template: names the column {exc}, which the rows do not have; dataset rows have "
                f"columns {sorted(row)} (write '{{{{' and '}}}}' for literal braces)") from None
        except (IndexError, ValueError) as exc:
            raise DataError(f"data.prompt_template: {cfg.prompt_template!r} is not a format string of column "
                            f"names ({exc}); write fields as {{column}}") from None
    else:
        if cfg.prompt_field not in row:
            raise _missing_column("data.prompt_field", cfg.prompt_field, row,
                                  " (or build the prompt with data.prompt_template)")
        if row[cfg.prompt_field] is None or str(row[cfg.prompt_field]).strip() == "":
            raise DataError(f"data.prompt_field: row {index} has no prompt in column '{cfg.prompt_field}'")
        prompt = str(row[cfg.prompt_field])
    value, source = row.get(cfg.answer_field), f"column '{cfg.answer_field}'"
    if (value is None or str(value).strip() == "") and reference is not None:
        # a file mixing rows with and without the column gives null to those without it
        value, source = reference, "the trailing assistant turn"
    elif cfg.answer_field not in row:
        also = " (chat rows may instead end with an assistant turn holding it)" if cfg.messages_field else ""
        raise _missing_column("data.answer_field", cfg.answer_field, row, also)
    if value is None or str(value).strip() == "":
        raise DataError(f"data.answer_field: row {index} has no answer in {source}; every training problem needs "
                        "one (numbers and strings are both fine)")
    answer = ANSWER_FORMATS[fmt](str(value))
    if answer is None:
        raise DataError(
            f"data.answer_format: row {index} has no answer in {source} for format '{fmt}' (it needs "
            f"{_FORMAT_HINTS.get(fmt, 'an answer')}); the value starts {str(value)[:80]!r}. Set data.answer_format "
            "to raw | gsm8k | boxed to match the column, or fix the row")
    return Problem(prompt=prompt, answer=answer, fields=fields)


def _rows_to_problems(rows, cfg: DataConfig, limit: int) -> list[Problem]:
    fmt = answer_format_of(cfg)
    out = []
    for index, row in enumerate(rows):
        if len(out) >= limit:
            break
        out.append(row_to_problem(dict(row), index, cfg, fmt))
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
    """(train, eval) problems for a data config. Eval problems never overlap train ones.
    data.system_prompt, when set, opens every prompt of both."""
    if cfg.name == "arithmetic":
        # Held-out set from a different seed stream, de-duplicated against nothing: with
        # 100 distinct single-digit pairs overlap is unavoidable, so eval measures skill on
        # the task distribution, which is what "accuracy on held-out problems" means here.
        task = dict(lo=cfg.min_operand, hi=cfg.max_operand, num_terms=cfg.num_terms, operations=cfg.operations)
        train = arithmetic_problems(cfg.num_train, seed=cfg.seed, **task)
        evals = arithmetic_problems(cfg.num_eval, seed=cfg.seed + 10_000, **task)
        return _with_system(train, cfg), _with_system(evals, cfg)
    if cfg.name == "reasoning_gym":
        from rlkit.data.reasoning_gym import load_reasoning_gym  # the optional `tasks` extra

        train, evals = load_reasoning_gym(cfg)
        return _with_system(train, cfg), _with_system(evals, cfg)
    if cfg.name in ("jsonl", "parquet") and Path(cfg.path).expanduser().stat().st_size == 0:
        raise DataError(f"data.path: {cfg.path} is empty (no rows to train on)")
    train = _rows_to_problems(_load_hf(cfg, cfg.split), cfg, cfg.num_train)
    evals: list[Problem] = []
    if cfg.num_eval and cfg.eval_split:
        if cfg.name in ("jsonl", "parquet"):
            # one local file: hold out its tail
            evals, train = train[-cfg.num_eval :], train[: -cfg.num_eval]
        else:
            evals = _rows_to_problems(_load_hf(cfg, cfg.eval_split), cfg, cfg.num_eval)
    if not train:
        raise DataError(f"data source '{cfg.name}' ({cfg.path}) produced no training problems")
    return _with_system(train, cfg), _with_system(evals, cfg)


def _with_system(problems: list[Problem], cfg: DataConfig) -> list[Problem]:
    if cfg.system_prompt is None:
        return problems
    return [replace(p, prompt=with_system_prompt(p.prompt, cfg.system_prompt)) for p in problems]


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


# ----------------------------------------------------------------------------- prompt lengths


def prompt_token_counts(problems: Sequence[Problem], tokenizer: Any, *, chat_template: bool) -> list[int]:
    """Tokens of each rendered prompt, exactly as the engine will see it (`render_prompts`)."""
    from rlkit.rollout.engine import render_prompts

    if not problems:
        return []
    _, ids = render_prompts(tokenizer, [p.prompt for p in problems], chat_template=chat_template)
    return [len(i) for i in ids]


def _within(problems: Sequence[Problem], counts: Sequence[int], max_tokens: int) -> tuple[list[Problem], list[int]]:
    kept = [(p, n) for p, n in zip(problems, counts, strict=True) if n <= max_tokens]
    return [p for p, _ in kept], [n for _, n in kept]


def drop_long_prompts(problems: list[Problem], tokenizer, chat_template: bool, max_tokens: int,
                      what: str) -> list[Problem]:
    """The problems whose rendered prompt has at most `max_tokens` tokens, the dropped ones
    counted in a warning: `fit_prompt_lengths` with the engine's room as the only limit."""
    return fit_prompt_lengths(problems, tokenizer, chat_template=chat_template, max_prompt_tokens=None,
                              room=max_tokens, what=what, required=False)


def fit_prompt_lengths(problems: list[Problem], tokenizer: Any, *, chat_template: bool,
                       max_prompt_tokens: int | None, room: int, what: str, required: bool) -> list[Problem]:
    """The problems whose rendered prompt fits both limits, in order: data.max_prompt_tokens
    (when set), then `room` = rollout.max_model_len - rollout.max_new_tokens (what the engine
    can hold). Each limit logs how many prompts it dropped. Needs only the tokenizer, so a
    recipe runs it before any model weights load.

    required: every prompt dropped is a DataError naming the limit's field and the shortest
    and longest lengths seen (training prompts); else an empty result is returned (evaluation)."""
    counts = prompt_token_counts(problems, tokenizer, chat_template=chat_template)
    limits = [] if max_prompt_tokens is None else [(max_prompt_tokens, "data.max_prompt_tokens", "")]
    limits.append((room, "rollout.max_model_len", f" (rollout.max_model_len - rollout.max_new_tokens = {room})"))
    for max_tokens, field_name, detail in limits:
        if not problems:
            break
        kept, kept_counts = _within(problems, counts, max_tokens)
        dropped = len(problems) - len(kept)
        if dropped:
            log.warning("%s: dropped %d of %d %s prompts longer than %d tokens%s", field_name, dropped,
                        len(problems), what, max_tokens, detail)
        if required and not kept:
            fix = ("raise data.max_prompt_tokens" if field_name == "data.max_prompt_tokens"
                   else "raise rollout.max_model_len or lower rollout.max_new_tokens")
            raise DataError(
                f"{field_name}: all {len(problems)} {what} prompts are longer than {max_tokens} tokens{detail} "
                f"(shortest {min(counts)}, longest {max(counts)} tokens, chat template included); {fix}, "
                "or shorten the prompts")
        problems, counts = kept, kept_counts
    return problems
