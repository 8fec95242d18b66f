"""Local datasets as users have them: GSM8K- and MATH-style files with column mapping and
answer formats, chat rows, the system prompt, and the tokenizer-only prompt-length filter.

Files go through the real `datasets` loaders (json / parquet) into a temporary cache; the
tokenizer is SmolLM2's (the tiny test model carries it), so token counts are real.
"""

from __future__ import annotations

import logging

import pytest
from datafiles import write_jsonl

from rlkit.config import ConfigError, DataConfig, config_from_dict
from rlkit.data.datasets import (
    DataError,
    Problem,
    answer_format_of,
    boxed_answer,
    fit_prompt_lengths,
    gsm8k_answer,
    load_problems,
    prompt_token_counts,
    raw_answer,
    split_chat,
    with_system_prompt,
)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from rlkit.assets import tiny_model_dir

    return AutoTokenizer.from_pretrained(tiny_model_dir())


# ----------------------------------------------------------------------------- answer formats


@pytest.mark.parametrize(("text", "expected"), [
    (r"The answer is $\boxed{42}$.", "42"),
    (r"so $x = \boxed{\frac{1}{2}}$", r"\frac{1}{2}"),                        # nested braces
    (r"\boxed{3} first, then corrected: \boxed{5}", "5"),                      # the last box
    (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),                                        # escaped braces are content
    (r"\boxed{ \sqrt{2}+\left(\frac{a}{b}\right) }", r"\sqrt{2}+\left(\frac{a}{b}\right)"),  # stripped
    (r"hence \fbox{7}", "7"),
    (r"The answer is $\boxed 5$.", "5"),                                       # MATH's brace-less form
    (r"no box here: 42", None),
    (r"\boxed{}", None),                                                        # empty
    (r"\boxed{\frac{1}{2}", None),                                              # never closes
    (r"\boxedfoo{3}", None),                                                    # not the command
])
def test_boxed_answer(text, expected):
    assert boxed_answer(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("She sold 48/2 = <<48/2=24>>24 clips.\n#### 72", "72"),
    ("#### 1,234,567", "1234567"),        # commas removed
    ("a #### b\n#### -3", "-3"),          # the last marker
    ("The answer is 72.", None),          # no marker
    ("####   ", None),                    # nothing after it
])
def test_gsm8k_answer(text, expected):
    assert gsm8k_answer(text) == expected


def test_raw_answer_keeps_the_column_and_refuses_blank():
    assert raw_answer(r"\frac{1}{2}") == r"\frac{1}{2}"
    assert raw_answer(" 7 ") == " 7 "  # as it is: math_accuracy / exact_number normalise
    assert raw_answer("  ") is None


@pytest.mark.parametrize(("name", "fmt", "expected"), [
    ("gsm8k", None, "gsm8k"), ("math", None, "raw"), ("jsonl", None, "raw"), ("hub", None, "raw"),
    ("jsonl", "boxed", "boxed"), ("gsm8k", "raw", "raw"),
])
def test_answer_format_default_per_source(name, fmt, expected):
    cfg = DataConfig(name=name, path=None if name in ("gsm8k", "math") else "x.jsonl", answer_format=fmt)
    assert answer_format_of(cfg) == expected


# ----------------------------------------------------------------------------- GSM8K- and MATH-style files


GSM8K_ROWS = [
    {"question": "Natalia sold 48 clips in April and half as many in May. How many in total?",
     "answer": "In May she sold 48/2 = <<48/2=24>>24.\nIn total 48+24 = <<48+24=72>>72.\n#### 72"},
    {"question": "A shop earns 1,000 a day. How much in 2 days?", "answer": "1,000 * 2 = 2,000\n#### 2,000"},
    {"question": "What is 5 - 8?", "answer": "#### -3"},
]

MATH_ROWS = [
    {"problem": "Compute $\\frac{1}{2}+\\frac{1}{4}$.", "solution": "We get $\\boxed{\\frac{3}{4}}$.",
     "level": "Level 1", "type": "Prealgebra"},
    {"problem": "Solve $x^2=4$, $x>0$.", "solution": "First $x=\\pm 2$; so $\\boxed{2}$.", "level": "Level 2",
     "type": "Algebra"},
]


def test_gsm8k_style_jsonl(isolated_hf_cache):
    path = write_jsonl(isolated_hf_cache / "gsm8k.jsonl", GSM8K_ROWS)
    train, evals = load_problems(DataConfig(name="jsonl", path=str(path), answer_format="gsm8k", num_eval=1))
    assert [p.answer for p in train] == ["72", "2000"]   # '####' read, comma dropped
    assert [p.answer for p in evals] == ["-3"]           # the file's last row is held out
    assert train[0].prompt == GSM8K_ROWS[0]["question"]
    assert train[0].fields["answer"] == GSM8K_ROWS[0]["answer"]  # the full solution still goes to rewards


def test_math_style_parquet_with_column_mapping(isolated_hf_cache):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = isolated_hf_cache / "math.parquet"
    pq.write_table(pa.Table.from_pylist(MATH_ROWS), path)
    cfg = DataConfig(name="parquet", path=str(path), prompt_field="problem", answer_field="solution",
                     answer_format="boxed", num_eval=0,
                     prompt_template="{problem}\nPut your final answer within \\boxed{{}}. ({type})")
    train, _ = load_problems(cfg)
    assert [p.answer for p in train] == ["\\frac{3}{4}", "2"]
    assert train[0].prompt == "Compute $\\frac{1}{2}+\\frac{1}{4}$.\nPut your final answer within \\boxed{}. (Prealgebra)"
    assert train[1].fields["level"] == "Level 2"


def test_prompt_template_may_name_any_column_without_prompt_field(isolated_hf_cache):
    path = write_jsonl(isolated_hf_cache / "t.jsonl", MATH_ROWS)
    # prompt_field keeps its default 'question', which the rows lack: the template is what counts
    cfg = DataConfig(name="jsonl", path=str(path), answer_field="solution", answer_format="boxed", num_eval=0,
                     prompt_template="[{level}] {problem}")
    assert load_problems(cfg)[0][1].prompt == "[Level 2] Solve $x^2=4$, $x>0$."


@pytest.mark.parametrize(("data", "message"), [
    ({"prompt_field": "question"},
     "data.prompt_field: the rows have no column 'question'; dataset rows have columns ['level', 'problem', "
     "'solution', 'type']; set data.prompt_field to one of them (or build the prompt with data.prompt_template)"),
    ({"prompt_field": "problem"},
     "data.answer_field: the rows have no column 'answer'; dataset rows have columns ['level', 'problem', "
     "'solution', 'type']; set data.answer_field to one of them"),
    ({"prompt_template": "{problem} ({difficulty})", "answer_field": "solution"},
     "data.prompt_template: names the column 'difficulty', which the rows do not have; dataset rows have "
     "columns ['level', 'problem', 'solution', 'type']"),
])
def test_a_mapping_that_does_not_fit_the_rows_names_the_field_and_the_columns(isolated_hf_cache, data, message):
    path = write_jsonl(isolated_hf_cache / "t.jsonl", MATH_ROWS)
    with pytest.raises(DataError) as info:
        load_problems(DataConfig(name="jsonl", path=str(path), num_eval=0, **data))
    assert str(info.value).startswith(message)
    assert isinstance(info.value, ConfigError)  # the recipe reports it as one: exit 2, message verbatim


def test_an_answer_format_that_finds_nothing_names_the_row(isolated_hf_cache):
    rows = GSM8K_ROWS[:2] + [{"question": "What is 2 + 2?", "answer": "It is 4."}]
    path = write_jsonl(isolated_hf_cache / "t.jsonl", rows)
    with pytest.raises(DataError) as info:
        load_problems(DataConfig(name="jsonl", path=str(path), answer_format="gsm8k", num_eval=0))
    assert str(info.value) == (
        "data.answer_format: row 2 has no answer in column 'answer' for format 'gsm8k' (it needs a '#### <answer>' "
        "line); the value starts 'It is 4.'. Set data.answer_format to raw | gsm8k | boxed to match the column, "
        "or fix the row")


def test_a_blank_prompt_names_the_row(isolated_hf_cache):
    path = write_jsonl(isolated_hf_cache / "t.jsonl", [{"question": "1+1", "answer": "2"}, {"question": " ", "answer": "3"}])
    with pytest.raises(DataError, match=r"^data.prompt_field: row 1 has no prompt in column 'question'$"):
        load_problems(DataConfig(name="jsonl", path=str(path), num_eval=0))


# ----------------------------------------------------------------------------- chat rows


def test_split_chat_keeps_system_and_history_and_takes_the_trailing_assistant_turn():
    chat = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And times 3?"},
        {"role": "assistant", "content": "4 * 3 = 12\n#### 12"},
    ]
    prompt, reference = split_chat(chat, row=0, field="messages")
    assert prompt == chat[:4]                 # up to and including the last user turn
    assert reference == "4 * 3 = 12\n#### 12"
    assert split_chat(chat[:4], row=0, field="messages") == (chat[:4], None)  # ends on the user: no reference


def test_split_chat_drops_extra_keys_of_a_message():
    prompt, _ = split_chat([{"role": "user", "content": "hi", "name": "x"}], row=0, field="m")
    assert prompt == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(("value", "message"), [
    ([{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}],
     "data.messages_field: row 3, column 'messages' has no user turn (roles: ['system', 'assistant']); the prompt "
     "ends with the last user message"),
    ([], "data.messages_field: row 3, column 'messages' holds list '[]'; a chat row is a non-empty list of "
         "{role, content} messages"),
    ("What is 1 + 1?", "data.messages_field: row 3, column 'messages' holds str 'What is 1 + 1?'; a chat row is"),
    ([{"role": "user"}], "data.messages_field: row 3, column 'messages': message 0 is \"{'role': 'user'}\"; each "
                         "message needs a 'role' and a text 'content'"),
])
def test_bad_chat_rows_name_the_row_and_the_field(value, message):
    with pytest.raises(DataError) as info:
        split_chat(value, row=3, field="messages")
    assert str(info.value).startswith(message)


CHAT_ROWS = [
    {"messages": [{"role": "user", "content": "What is 3 + 4?"}, {"role": "assistant", "content": "3 + 4 = 7. #### 7"}]},
    {"messages": [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "What is 1 + 1?"},
                  {"role": "assistant", "content": "Deux. #### 2"}]},
    {"messages": [{"role": "user", "content": "What is 2 * 5?"}], "answer": "10"},
]


def test_chat_rows_from_a_jsonl_file(isolated_hf_cache):
    path = write_jsonl(isolated_hf_cache / "chat.jsonl", CHAT_ROWS)
    cfg = DataConfig(name="jsonl", path=str(path), messages_field="messages", answer_format="gsm8k", num_eval=0)
    with pytest.raises(DataError, match="row 2 has no answer in column 'answer' for format 'gsm8k'"):
        load_problems(cfg)  # row 2's own answer column, "10", has no '####'
    train, _ = load_problems(cfg.model_copy(update={"answer_format": "raw"}))
    assert [p.prompt for p in train] == [CHAT_ROWS[0]["messages"][:1], CHAT_ROWS[1]["messages"][:2],
                                         CHAT_ROWS[2]["messages"]]
    # rows 0-1 have no answer column (`datasets` gives them null): the trailing assistant turn
    # is read (raw: as it is); row 2 has its own answer and no assistant turn
    assert [p.answer for p in train] == ["3 + 4 = 7. #### 7", "Deux. #### 2", "10"]
    assert [p.fields.get("demo") for p in train] == ["3 + 4 = 7. #### 7", "Deux. #### 2", None]
    gsm8k_rows = CHAT_ROWS[:2] + [{**CHAT_ROWS[2], "answer": "#### 10"}]
    train, _ = load_problems(cfg.model_copy(update={"path": str(write_jsonl(isolated_hf_cache / "c2.jsonl", gsm8k_rows))}))
    assert [p.answer for p in train] == ["7", "2", "10"]


def test_chat_rows_without_answer_or_assistant_turn_name_both_fields(isolated_hf_cache):
    path = write_jsonl(isolated_hf_cache / "chat.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(DataError) as info:
        load_problems(DataConfig(name="jsonl", path=str(path), messages_field="messages", num_eval=0))
    assert str(info.value) == (
        "data.answer_field: the rows have no column 'answer'; dataset rows have columns ['messages']; set "
        "data.answer_field to one of them (chat rows may instead end with an assistant turn holding it)")


def test_a_chat_file_without_the_messages_column(isolated_hf_cache):
    path = write_jsonl(isolated_hf_cache / "t.jsonl", GSM8K_ROWS)
    with pytest.raises(DataError, match=r"^data.messages_field: the rows have no column 'conversation'; dataset "
                                        r"rows have columns \['answer', 'question'\]"):
        load_problems(DataConfig(name="jsonl", path=str(path), messages_field="conversation", num_eval=0))


def test_chat_row_without_user_turn_from_a_file_names_its_row(isolated_hf_cache):
    rows = [CHAT_ROWS[0], {"messages": [{"role": "assistant", "content": "#### 1"}]}]
    path = write_jsonl(isolated_hf_cache / "t.jsonl", rows)
    with pytest.raises(DataError, match=r"^data.messages_field: row 1, column 'messages' has no user turn"):
        load_problems(DataConfig(name="jsonl", path=str(path), messages_field="messages", num_eval=0))


# ----------------------------------------------------------------------------- system prompt


def test_with_system_prompt():
    system = {"role": "system", "content": "Think step by step."}
    assert with_system_prompt("What is 1 + 1?", None) == "What is 1 + 1?"
    assert with_system_prompt("What is 1 + 1?", "Think step by step.") == [
        system, {"role": "user", "content": "What is 1 + 1?"}]
    chat = [{"role": "user", "content": "hi"}]
    assert with_system_prompt(chat, "Think step by step.") == [system, *chat]
    own = [{"role": "system", "content": "Row's own."}, *chat]
    assert with_system_prompt(own, "Think step by step.") == own  # the row's system turn is kept


def test_system_prompt_opens_every_source(isolated_hf_cache):
    train, evals = load_problems(DataConfig(num_train=3, num_eval=2, system_prompt="Be brief."))
    plain, _ = load_problems(DataConfig(num_train=3, num_eval=2))
    for p in train + evals:
        assert p.prompt[0] == {"role": "system", "content": "Be brief."} and p.prompt[1]["role"] == "user"
    assert [p.prompt[1]["content"] for p in train] == [q.prompt for q in plain]  # same problems
    path = write_jsonl(isolated_hf_cache / "chat.jsonl", CHAT_ROWS[:2])
    chats, _ = load_problems(DataConfig(name="jsonl", path=str(path), messages_field="messages", num_eval=0,
                                        answer_format="gsm8k", system_prompt="Be brief."))
    assert chats[0].prompt[0] == {"role": "system", "content": "Be brief."}
    assert chats[1].prompt[0] == {"role": "system", "content": "Answer in French."}  # its own is kept


def test_system_prompt_reaches_the_rendered_prompt(tokenizer):
    from rlkit.rollout.engine import render_prompts

    problem = with_system_prompt("What is 1 + 1?", "Be brief.")
    (text,), _ = render_prompts(tokenizer, [problem], chat_template=True)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 1 + 1?<|im_end|>\n"
                    "<|im_start|>assistant\n")  # replaces SmolLM2's default system message


BASE = {"model": {"name_or_path": "smollm2-135m"}}


@pytest.mark.parametrize(("raw", "message"), [
    ({"data": {"system_prompt": "Be brief."}, "rollout": {"chat_template": False}},
     "config error at data.system_prompt: a system message is part of the chat template, and "
     "rollout.chat_template is false; set rollout.chat_template: true, or put the instruction in data.prompt_template"),
    ({"data": {"name": "hub", "path": "org/chats", "messages_field": "messages"}, "rollout": {"chat_template": False}},
     "config error at data.messages_field: chat rows are rendered with the tokenizer's chat template, and "
     "rollout.chat_template is false; set rollout.chat_template: true, or read text rows with data.prompt_field"),
    ({"rewards": [{"name": "exact_number", "conversational": True}], "rollout": {"chat_template": False}},
     "config error at rewards.0.conversational: message-shaped prompts and completions need the chat template"),
    ({"data": {"name": "hub", "path": "org/chats", "messages_field": "messages", "prompt_template": "{q}"}},
     "config error at data.prompt_template: applies to text rows; with data.messages_field set the prompt is the "
     "row's conversation. Remove one of the two"),
    ({"data": {"answer_format": "boxed"}},
     "config error at data.answer_format: applies to dataset rows; data.name 'arithmetic' generates its prompts"),
    ({"data": {"answer_format": "latex"}}, "config error at data.answer_format: got 'latex'; input should be 'raw', "
                                           "'gsm8k' or 'boxed'"),
    ({"data": {"max_prompt_tokens": 0}}, "config error at data.max_prompt_tokens: got 0; input should be greater than 0"),
])
def test_data_settings_are_validated(raw, message):
    with pytest.raises(ConfigError) as info:
        config_from_dict({**BASE, **raw})
    assert message in str(info.value)


# ----------------------------------------------------------------------------- prompt lengths


def _words(k: int) -> Problem:
    # raw (no chat template), SmolLM2 adds no BOS: "word word ... word" is k tokens ('word', 'Ġword' x k-1)
    return Problem(" ".join(["word"] * k), str(k))


def test_prompt_token_counts_are_what_the_engine_sees(tokenizer):
    problems = [_words(3), _words(7)]
    assert prompt_token_counts(problems, tokenizer, chat_template=False) == [3, 7]
    # chat template on: SmolLM2's default system message and role markers come on top
    counts = prompt_token_counts(problems, tokenizer, chat_template=True)
    assert counts[1] - counts[0] == 4 and counts[0] > 3


def test_max_prompt_tokens_drops_and_counts(tokenizer, caplog):
    problems = [_words(k) for k in (3, 12, 5, 9, 30)]
    with caplog.at_level(logging.WARNING):
        kept = fit_prompt_lengths(problems, tokenizer, chat_template=False, max_prompt_tokens=9, room=20,
                                  what="training", required=True)
    assert [p.answer for p in kept] == ["3", "5", "9"]  # 9 <= 9 is kept; 12 and 30 dropped
    assert "data.max_prompt_tokens: dropped 2 of 5 training prompts longer than 9 tokens" in caplog.text
    assert "rollout.max_model_len" not in caplog.text  # nothing left over the engine's room (20)


def test_the_engine_room_applies_after_max_prompt_tokens(tokenizer, caplog):
    problems = [_words(k) for k in (3, 12, 5, 30)]
    with caplog.at_level(logging.WARNING):
        kept = fit_prompt_lengths(problems, tokenizer, chat_template=False, max_prompt_tokens=None, room=10,
                                  what="evaluation", required=False)
    assert [p.answer for p in kept] == ["3", "5"]
    assert ("rollout.max_model_len: dropped 2 of 4 evaluation prompts longer than 10 tokens "
            "(rollout.max_model_len - rollout.max_new_tokens = 10)") in caplog.text


def test_all_training_prompts_filtered_out_names_the_field_and_the_lengths(tokenizer):
    problems = [_words(k) for k in (12, 40, 25)]
    with pytest.raises(DataError) as info:
        fit_prompt_lengths(problems, tokenizer, chat_template=False, max_prompt_tokens=10, room=100,
                           what="training", required=True)
    assert str(info.value) == (
        "data.max_prompt_tokens: all 3 training prompts are longer than 10 tokens (shortest 12, longest 40 tokens, "
        "chat template included); raise data.max_prompt_tokens, or shorten the prompts")
    with pytest.raises(DataError, match=r"^rollout.max_model_len: all 3 training prompts are longer than 11 tokens "
                                        r"\(rollout.max_model_len - rollout.max_new_tokens = 11\) \(shortest 12, "
                                        r"longest 40 tokens"):
        fit_prompt_lengths(problems, tokenizer, chat_template=False, max_prompt_tokens=None, room=11,
                           what="training", required=True)
    # evaluation prompts are optional: all dropped leaves none, no error
    assert fit_prompt_lengths(problems, tokenizer, chat_template=False, max_prompt_tokens=10, room=100,
                              what="evaluation", required=False) == []
