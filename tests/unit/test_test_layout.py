"""The test tree itself: pytest imports test modules by basename (no packages, rootdir
imports), so two files with one name in different folders fail collection of the whole suite
in a clean checkout ("import file mismatch"), while running either folder alone passes."""

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_two_test_modules_share_a_basename():
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert [n for n, c in names.items() if c > 1] == []
