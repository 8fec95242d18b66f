"""Every example of docs/data.md runs: each ```yaml block, with the ```jsonl block before it
written to its `data.path`, validates as a recipe config and loads the answers its last
comment lists (`# -> answers: [...]`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from rlkit.config import config_from_dict
from rlkit.data.datasets import load_problems

DOC = Path(__file__).resolve().parents[3] / "docs/data.md"
BLOCK = re.compile(r"```(jsonl|yaml)\n(.*?)```", re.DOTALL)


def _examples() -> list[tuple[str, str]]:
    """(jsonl text, yaml text) pairs, in the page's order."""
    pairs, rows = [], None
    for kind, body in BLOCK.findall(DOC.read_text()):
        if kind == "jsonl":
            rows = body
        else:
            assert rows is not None, f"a yaml example without a jsonl block before it:\n{body}"
            pairs.append((rows, body))
    return pairs


def test_the_page_has_its_examples():
    assert len(_examples()) == 4  # GSM8K-style, MATH-style, chats, system prompt


@pytest.mark.parametrize(("rows", "config"), _examples(), ids=["gsm8k", "math", "chats", "system_prompt"])
def test_doc_example_loads(rows, config, tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    raw = yaml.safe_load(config)
    path = tmp_path / raw["data"]["path"]
    path.write_text(rows)
    raw["data"]["path"] = str(path)
    cfg = config_from_dict({"model": {"name_or_path": "smollm2-135m"}, **raw})
    expected = json.loads(config.strip().splitlines()[-1].split("# -> answers:", 1)[1])
    train, _ = load_problems(cfg.data)
    assert [p.answer for p in train] == expected
    assert len(train) == len([line for line in rows.splitlines() if line.strip()])
