"""The bad-input catalogue: every case ends in a clear message or a counted, logged event.

Each test names its case; docs/reliability.md lists them with their outcome. Config-level
cases go through `load_config` (what `rlkit validate` runs, nothing heavy loaded); data,
reward, LoRA and checkpoint cases call the function that meets the input; the cases that only
a starting run can meet launch the recipe on the tiny model.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import re
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch
from harness import launch, ok, records
from trainer_helpers import tiny_batch, tiny_llama

from rlkit.assets import tiny_model_dir
from rlkit.config import ConfigError, LoraConfig, load_config
from rlkit.data.datasets import Problem, drop_long_prompts, load_problems
from rlkit.rollout.engine import pad_token_id
from rlkit.trainer.checkpoint import latest_checkpoint, save_checkpoint
from rlkit.trainer.collect import RewardFunction, nonfinite_rows, score_rollouts

BASE = "model: {name_or_path: smollm2-135m}\n"


def _config_error(tmp_path: Path, text: str, *overrides: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    return str(info.value)


# ----------------------------------------------------------------------------- the config file


def test_01_empty_yaml(tmp_path):
    assert "config error at model: required field is missing" in _config_error(tmp_path, "")


def test_02_yaml_with_a_tab(tmp_path):
    msg = _config_error(tmp_path, BASE + "trainer:\n\tmax_steps: 3\n")
    assert "is not valid YAML" in msg and "line 3" in msg


def test_03_duplicate_key_names_both_lines(tmp_path):
    msg = _config_error(tmp_path, BASE + "trainer:\n  max_steps: 10\n  learning_rate: 1e-5\n  max_steps: 50\n")
    assert "duplicate key 'max_steps' at lines 3 and 5" in msg


def test_04_config_file_that_does_not_exist(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_05_unknown_recipe_section(tmp_path):
    msg = _config_error(tmp_path, BASE + "trainr: {max_steps: 3}\n")
    assert "trainr" in msg and "did you mean 'trainer'" in msg


def test_06_model_path_that_does_not_exist(tmp_path):
    msg = _config_error(tmp_path, "model: {name_or_path: /no/such/model}\n")
    assert "model.name_or_path: /no/such/model does not exist" in msg


def test_07_model_directory_without_weights(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    msg = _config_error(tmp_path, f"model: {{name_or_path: {d}}}\n")
    assert "holds no model" in msg and "config.json" in msg


def test_08_teacher_path_that_does_not_exist(tmp_path):
    msg = _config_error(tmp_path, BASE + "regularizers: [{name: kdrl, coef: 0.01}]\n",
                        "model.teacher_model=./no/such/teacher")
    assert "model.teacher_model: ./no/such/teacher does not exist" in msg


def test_09_data_file_that_does_not_exist(tmp_path):
    msg = _config_error(tmp_path, BASE + "data: {name: jsonl, path: /no/such/file.jsonl}\n")
    assert "data.path: /no/such/file.jsonl does not exist" in msg


def test_10_group_of_one_with_a_group_relative_estimator(tmp_path):
    msg = _config_error(tmp_path, BASE + "rollout: {group_size: 1}\n")
    assert "rollout.group_size is 1" in msg and "compares responses within a group" in msg


# ----------------------------------------------------------------------------- data


def _jsonl_config(tmp_path: Path, rows: list[dict] | None, **data):
    path = tmp_path / "d.jsonl"
    path.write_text("" if rows is None else "".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(_write(tmp_path, BASE), ["data.name=jsonl", f"data.path={path}", "data.num_eval=0",
                                                *(f"data.{k}={v}" for k, v in data.items())])
    return cfg.data


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "base.yaml"
    p.write_text(text)
    return p


def test_11_empty_dataset_file(tmp_path):
    with pytest.raises(ValueError, match=r"data.path: .*d.jsonl is empty"):
        load_problems(_jsonl_config(tmp_path, None))


def test_12_dataset_without_the_prompt_column_lists_the_columns(tmp_path):
    with pytest.raises(KeyError, match=r"dataset rows have columns \['q', 'sol'\]"):
        load_problems(_jsonl_config(tmp_path, [{"q": "1+1", "sol": "2"}]))


def test_13_non_string_answers_are_read_as_text_and_a_missing_one_is_refused(tmp_path):
    train, _ = load_problems(_jsonl_config(tmp_path, [{"question": "1+1", "answer": 2}]))
    assert train[0].answer == "2"
    with pytest.raises(ValueError, match="row 1 has no answer in column 'answer'"):
        load_problems(_jsonl_config(tmp_path, [{"question": "1+1", "answer": 2}, {"question": "2+2", "answer": None}]))


def test_14_prompts_longer_than_the_model_length_are_dropped_and_counted(caplog):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir())
    problems = [Problem("What is 1 + 1?", "2"), Problem("word " * 400, "x"), Problem("What is 2 + 2?", "4")]
    with caplog.at_level(logging.WARNING):
        kept = drop_long_prompts(problems, tok, True, 64, "training")
    assert [p.answer for p in kept] == ["2", "4"]
    assert "dropped 1 of 3 training prompts longer than 64 tokens" in caplog.text


def test_15_tokenizer_without_pad_token_pads_with_eos():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir())
    tok.pad_token = None
    assert pad_token_id(tok) == tok.eos_token_id


# ----------------------------------------------------------------------------- rewards


def _score(fn, timeout_s=None):
    batch = tiny_batch()
    problems = [Problem("p0", "7"), Problem("p1", "3")]
    return score_rollouts(batch, problems, [RewardFunction("r", fn, 1.0, {}, timeout_s=timeout_s)])


def test_16_reward_that_raises_is_counted_and_scores_zero():
    def boom(prompts, completions, **_):
        raise RuntimeError("bug in the reward")

    scored = _score(boom)
    assert scored.failures == {"r": 1} and float(scored.rewards.abs().sum()) == 0.0


def test_17_reward_returning_nan_poisons_its_rows_and_the_step_is_skipped():
    scored = _score(lambda prompts, completions, **_: [math.nan] + [1.0] * 7)
    assert nonfinite_rows(scored.rewards, torch.zeros(8)) == [0]


def test_18_reward_returning_the_wrong_number_of_values():
    scored = _score(lambda prompts, completions, **_: [1.0] * 3)
    assert scored.failures == {"r": 1}


def test_19_reward_returning_strings_is_a_counted_failure_not_a_crash():
    scored = _score(lambda prompts, completions, **_: ["yes"] * 8)
    assert scored.failures == {"r": 1} and float(scored.rewards.sum()) == 0.0


def test_20_reward_that_hangs_past_its_timeout():
    def hang(prompts, completions, **_):
        time.sleep(30)
        return [1.0] * 8

    t0 = time.perf_counter()
    scored = _score(hang, timeout_s=0.5)
    assert time.perf_counter() - t0 < 5 and scored.failures == {"r": 1}


# ----------------------------------------------------------------------------- model


def test_21_lora_target_modules_that_do_not_exist():
    from rlkit.trainer.deepspeed import apply_lora

    with pytest.raises(ConfigError, match=r"model.lora.target_modules: \['qq_proj'\] match no linear layer.*q_proj"):
        apply_lora(tiny_llama(), LoraConfig(target_modules=["q_proj", "qq_proj"]))


def test_22_tokenizer_without_a_chat_template(tmp_path):
    model = tmp_path / "no_template"
    shutil.copytree(tiny_model_dir(), model)
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(cfg))
    (model / "chat_template.jinja").unlink(missing_ok=True)
    proc = launch(tmp_path / "run", "rollout.engine=hf", f"model.name_or_path={model}")
    assert proc.returncode != 0, proc.stderr[-2000:]  # the worker exits 2 (config error)
    assert "rollout.chat_template is true but the tokenizer" in proc.stderr and "has no chat template" in proc.stderr


# ----------------------------------------------------------------------------- checkpoints


class _FullDisk:
    """An accelerator whose state save fails as on a full disk."""

    is_main_process = True
    num_processes = 1

    def wait_for_everyone(self):
        pass

    def save_state(self, path):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "model.bin").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")


def test_23_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path):
    prev = tmp_path / "checkpoints/step-000002"
    prev.mkdir(parents=True)
    (prev / "trainer_state.json").write_text('{"step": 2}')
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(_FullDisk(), tmp_path, 4, {}, keep_last=2)
    assert latest_checkpoint(tmp_path) == prev and not (tmp_path / "checkpoints/.tmp-step-000004").exists()


@pytest.mark.slow
@pytest.mark.parametrize(("change", "override", "message"), [
    ("group_size", "rollout.group_size=2", "rollout.group_size = 4, this run has 2"),
    ("world_size", None, "the number of processes = 2, this run has 1"),
    ("model", f"model.name_or_path={tiny_model_dir(seed=1)}", "model.name_or_path ="),
], ids=["other-group-size", "other-rank-count", "other-model"])
def test_24_a_checkpoint_from_another_run_shape_is_refused(tmp_path, change, override, message):
    run = tmp_path / "run"
    ok(launch(run, "rollout.engine=hf", "trainer.max_steps=2", "eval.enabled=false"))
    if change == "world_size":  # as if written by 2 processes
        state_file = run / "checkpoints/step-000002/trainer_state.json"
        state = json.loads(state_file.read_text())
        state["run"]["world_size"] = 2
        state_file.write_text(json.dumps(state))
    proc = launch(run, "rollout.engine=hf", "trainer.max_steps=3", "eval.enabled=false", *([override] if override else []))
    assert proc.returncode != 0 and "cannot resume from" in proc.stderr and message in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow
def test_25_a_corrupted_checkpoint_is_set_aside_and_the_one_before_is_used(tmp_path):
    run = tmp_path / "run"
    ok(launch(run, "rollout.engine=hf", "eval.enabled=false"))  # checkpoints at 2 and 4
    shard = next((run / "checkpoints/step-000004").rglob("*model_states.pt"))
    shard.write_bytes(shard.read_bytes()[:100])  # torn file
    proc = launch(run, "rollout.engine=hf", "eval.enabled=false", "trainer.max_steps=5")
    ok(proc)
    assert "checkpoint step-000004 cannot be read" in proc.stderr
    assert (run / "checkpoints/.corrupt-step-000004").is_dir()
    assert [r["step"] for r in records(run)] == [1, 2, 3, 4, 5]  # steps 3-4 redone from step 2


def test_26_an_exponent_without_a_dot_is_a_number_not_a_string(tmp_path):
    """YAML 1.1 reads `2e-5` as the string "2e-5"; in an untyped params mapping that reached
    a constructor as text (a ReLIFT run once failed on `lr: 2e-5`). The loader reads it as 2e-05."""
    path = tmp_path / "c.yaml"
    path.write_text(BASE + "data: {demo_field: demo}\nmixing: {name: relift, params: {lr: 2e-5}}\n")
    assert load_config(path).mixing.params["lr"] == 2e-5
    assert load_config(path, ["mixing.params.lr=3e-6"]).mixing.params["lr"] == 3e-6


# ----------------------------------------------------------------------------- local data, chats, lengths


def test_27_a_jsonl_file_whose_columns_do_not_match_the_mapping_names_the_field_to_set(tmp_path):
    rows = [{"problem": "1+1", "solution": "2"}]
    with pytest.raises(ConfigError) as info:  # a DataError: the recipe prints it and exits 2
        load_problems(_jsonl_config(tmp_path, rows, prompt_field="problem"))
    assert str(info.value) == ("data.answer_field: the rows have no column 'answer'; dataset rows have columns "
                               "['problem', 'solution']; set data.answer_field to one of them")


def test_28_a_chat_row_without_a_user_turn_names_its_row_and_the_field(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]},
            {"messages": [{"role": "system", "content": "Be brief."}, {"role": "assistant", "content": "2"}]}]
    with pytest.raises(ConfigError, match=r"^data.messages_field: row 1, column 'messages' has no user turn "
                                          r"\(roles: \['system', 'assistant'\]\)"):
        load_problems(_jsonl_config(tmp_path, rows, messages_field="messages"))


def test_29_an_answer_format_that_finds_no_answer_names_the_row(tmp_path):
    rows = [{"question": "q0", "answer": "so \\boxed{3}"}, {"question": "q1", "answer": "it is 4"}]
    with pytest.raises(ConfigError, match=r"^data.answer_format: row 1 has no answer in column 'answer' for format "
                                          r"'boxed' \(it needs a \\boxed\{...\}\)"):
        load_problems(_jsonl_config(tmp_path, rows, answer_format="boxed"))


def test_30_every_prompt_filtered_out_by_length_stops_before_any_weights_load(tmp_path):
    # weights that cannot be read: a run that loaded them before checking the data would fail
    # with a safetensors error instead of the data message
    model = tmp_path / "unreadable_weights"
    shutil.copytree(tiny_model_dir(), model)
    (model / "model.safetensors").write_bytes(b"not a safetensors file")
    proc = launch(tmp_path / "run", "rollout.engine=hf", f"model.name_or_path={model}", "data.max_prompt_tokens=5")
    assert proc.returncode != 0 and "exitcode  : 2" in proc.stderr, proc.stderr[-3000:]  # the worker's: config error
    assert re.search(r"data.max_prompt_tokens: all \d+ training prompts are longer than 5 tokens \(shortest \d+, "
                     r"longest \d+ tokens, chat template included\); raise data.max_prompt_tokens", proc.stderr)
    assert "safetensors" not in proc.stderr.lower()


def test_31_a_system_prompt_without_the_chat_template(tmp_path):
    msg = _config_error(tmp_path, BASE + "data: {system_prompt: Be brief.}\nrollout: {chat_template: false}\n")
    assert "config error at data.system_prompt: a system message is part of the chat template" in msg


# ----------------------------------------------------------------------------- reasoning-gym tasks


def test_32_an_unknown_reasoning_gym_task_or_bad_params(tmp_path, monkeypatch):
    data = "data: {name: reasoning_gym, task: gdc}\n"
    msg = _config_error(tmp_path, BASE + data)
    assert msg.startswith("config error at data.task: unknown reasoning-gym task 'gdc'; did you mean 'gcd'? "
                          "Available tasks: ab, acre, ")
    assert ", chain_sum, " in msg and ", leg_counting, " in msg
    msg = _config_error(tmp_path, BASE + "data: {name: reasoning_gym, task: gcd, task_params: {max_value: 0}}\n")
    assert msg.startswith("config error at data.task_params: reasoning-gym refused {'max_value': 0} for task 'gcd': ")
    assert msg.endswith("Options of 'gcd': min_numbers, max_numbers, min_value, max_value.")
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # as if the `tasks` extra were not installed
    msg = _config_error(tmp_path, BASE + data)
    assert msg == ("config error at data.name: reasoning_gym needs the reasoning-gym package, which is not "
                   "installed; install the `tasks` extra: pip install 'rlkit[tasks]'")
