"""reasoning-gym tasks as a problem source (`data.name: reasoning_gym`).

reasoning-gym (https://github.com/open-thought/reasoning-gym, PyPI `reasoning-gym`, the
`tasks` extra: `pip install 'rlkit[tasks]'`) generates problems procedurally, offline, each
task with its own verifier `score_answer(answer, entry)`. `data.task` names the task
(`chain_sum`, `gcd`, ...), `data.task_params` its options (the fields of the task's config
class, e.g. `{min_terms: 2, max_terms: 2}`); `data.num_train`, `data.num_eval` and `data.seed`
size and seed it as they do the arithmetic task.

Held-out split: reasoning-gym draws item `i` of a dataset from `Random(seed + i)`, so the
training problems use the seeds `seed .. seed + num_train - 1` and the held-out ones come from
`seed + HELD_OUT_SEED_OFFSET` (10,000,000) on: the two seed ranges never meet while
data.num_train stays under 10 million. Distinct seeds do not make distinct problems, though: a
task with few possible problems (single-digit sums) repeats questions, and a held-out question
can also be a training one. `load_reasoning_gym` counts those and logs the count.

Each `Problem` carries, for the `reasoning_gym` reward (rewards/reasoning_gym.py):
`entry` (reasoning-gym's item: question, answer, metadata), `task` and `task_params`, from
which the reward rebuilds the task (cached) and calls its own `score_answer`: some tasks
score with their config (puzzle24, decimal_arithmetic, ...), so the params travel along.

reasoning_gym is imported lazily: the rest of rlkit, and configs that do not use it, work
without the extra.
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
from typing import TYPE_CHECKING, Any

from rlkit.config import ConfigError

if TYPE_CHECKING:
    from rlkit.config import DataConfig
    from rlkit.data.datasets import Problem

log = logging.getLogger(__name__)

HELD_OUT_SEED_OFFSET = 10_000_000  # held-out problems: seed + this (see the module docstring)
_SET_ELSEWHERE = {"seed": "data.seed", "size": "data.num_train / data.num_eval"}  # not task params


def _reasoning_gym():
    """The reasoning_gym package, or a ConfigError saying which extra installs it."""
    try:
        import reasoning_gym
    except ImportError:
        raise ConfigError("data.name: reasoning_gym needs the reasoning-gym package, which is not installed; "
                          "install the `tasks` extra: pip install 'rlkit[tasks]'") from None
    return reasoning_gym


def available_tasks() -> list[str]:
    """Every task name reasoning-gym registers."""
    _reasoning_gym()
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def task_param_names(task: str) -> list[str]:
    """The options a task's config class takes (less seed and size, which rlkit sets)."""
    import dataclasses

    from reasoning_gym.factory import DATASETS

    config_cls = DATASETS[task][1]
    return [f.name for f in dataclasses.fields(config_cls) if f.name not in _SET_ELSEWHERE]


def build_task(task: str, params: dict[str, Any], *, size: int, seed: int):
    """`reasoning_gym.create_dataset(task, size=size, seed=seed, **params)`, its errors as
    ConfigErrors naming `data.task` (unknown task: did-you-mean and the list) or
    `data.task_params` (reasoning-gym's own message and the accepted options)."""
    rg = _reasoning_gym()
    known = available_tasks()
    if task not in known:
        close = difflib.get_close_matches(task, known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else "."
        raise ConfigError(f"data.task: unknown reasoning-gym task '{task}'{hint} Available tasks: {', '.join(known)}.")
    clash = [k for k in params if k in _SET_ELSEWHERE]
    if clash:
        raise ConfigError(f"data.task_params.{clash[0]}: set by rlkit from {_SET_ELSEWHERE[clash[0]]}; remove it "
                          "from data.task_params")
    try:
        return rg.create_dataset(task, size=size, seed=seed, **params)
    except Exception as exc:  # noqa: BLE001 - reasoning-gym validates with asserts, TypeErrors, ValueErrors
        accepted = ", ".join(task_param_names(task)) or "(none)"
        why = str(exc) or type(exc).__name__
        raise ConfigError(f"data.task_params: reasoning-gym refused {params} for task '{task}': {why}. "
                          f"Options of '{task}': {accepted}.") from None


def check_task(task: str, params: dict[str, Any], *, seed: int) -> None:
    """Build the task and generate one problem, so that a bad name or option fails when the
    config is validated (some options are only used, and refused, when a problem is made)."""
    ds = build_task(task, params, size=1, seed=seed)
    try:
        ds[0]
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"data.task_params: task '{task}' with {params} could not generate a problem: "
                          f"{str(exc) or type(exc).__name__}") from None


def entry_to_problem(entry: dict[str, Any], task: str, params: dict[str, Any], template: str | None) -> Problem:
    """One reasoning-gym item -> Problem: the question (through data.prompt_template, whose one
    field is `{question}`, when set), the task's answer as the reference, and what the
    reward needs to score with the task's own verifier."""
    from rlkit.data.datasets import DataError, Problem

    prompt = entry["question"]
    if template is not None:
        try:
            prompt = template.format(question=entry["question"])
        except (KeyError, IndexError, ValueError) as exc:
            raise DataError(f"data.prompt_template: {template!r} does not format with reasoning-gym's question "
                            f"({type(exc).__name__}: {exc}); its one field is {{question}} (write '{{{{' and '}}}}' "
                            "for literal braces)") from None
    answer = entry.get("answer")
    return Problem(prompt=prompt, answer="" if answer is None else str(answer),
                   fields={"entry": entry, "task": task, "task_params": params})


def count_overlap(train: list[Problem], held_out: list[Problem]) -> int:
    """How many held-out problems ask a question that is also a training question."""
    seen = {p.fields["entry"]["question"] for p in train}
    return sum(p.fields["entry"]["question"] in seen for p in held_out)


def load_reasoning_gym(cfg: DataConfig) -> tuple[list[Problem], list[Problem]]:
    """(train, held-out) problems of data.task: num_train from data.seed, num_eval from
    data.seed + HELD_OUT_SEED_OFFSET; logs how many held-out questions are training ones."""
    params = dict(cfg.task_params)
    train_ds = build_task(cfg.task, params, size=cfg.num_train, seed=cfg.seed)
    train = [entry_to_problem(train_ds[i], cfg.task, params, cfg.prompt_template) for i in range(cfg.num_train)]
    held_out: list[Problem] = []
    if cfg.num_eval:
        eval_ds = build_task(cfg.task, params, size=cfg.num_eval, seed=cfg.seed + HELD_OUT_SEED_OFFSET)
        held_out = [entry_to_problem(eval_ds[i], cfg.task, params, cfg.prompt_template) for i in range(cfg.num_eval)]
        overlap = count_overlap(train, held_out)
        distinct = len({p.fields["entry"]["question"] for p in train})
        log.info("reasoning_gym %s: %d training problems (%d distinct questions), %d held-out; %d held-out "
                 "questions (%.1f%%) also appear in training", cfg.task, len(train), distinct, len(held_out),
                 overlap, 100.0 * overlap / len(held_out))
    return train, held_out


# ----------------------------------------------------------------------------- scoring


@functools.lru_cache(maxsize=64)
def _scorer(task: str, params_json: str):
    return build_task(task, json.loads(params_json), size=1, seed=0).score_answer


def score_answer(answer: str | None, entry: dict[str, Any], task: str, params: dict[str, Any]) -> float:
    """The task's own `score_answer(answer, entry)`, from a task built once per (task, params)."""
    return float(_scorer(task, json.dumps(params, sort_keys=True))(answer, entry))
