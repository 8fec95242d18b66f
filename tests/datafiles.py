"""Small data files written by the tests (importable: `tests/` is on pytest's pythonpath)."""

import json


def write_jsonl(path, rows):
    """`rows` (dicts) as a jsonl file at `path`; returns the path."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
