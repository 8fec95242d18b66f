"""The one-step-off prefetcher (rollout.async): interval overlap, one batch in flight, errors
kept for the step that takes the batch, and `wait` before a weight sync."""

from __future__ import annotations

import threading

import pytest

from rlkit.trainer.prefetch import RolloutPrefetcher, overlap_seconds


@pytest.mark.parametrize(("a", "b", "want"), [
    ((0.0, 3.0), (2.0, 5.0), 1.0),   # 3 - 2
    ((2.0, 5.0), (0.0, 3.0), 1.0),   # symmetric
    ((0.0, 10.0), (2.0, 5.0), 3.0),  # one inside the other: the inner one's length
    ((0.0, 1.0), (2.0, 3.0), 0.0),   # disjoint
    ((0.0, 2.0), (2.0, 3.0), 0.0),   # touching
])
def test_overlap_seconds(a, b, want):
    assert overlap_seconds(a, b) == pytest.approx(want)


def test_a_prefetch_is_taken_by_its_step_and_only_one_is_in_flight():
    p = RolloutPrefetcher()
    try:
        release = threading.Event()
        p.start(3, [4, 5], {"epoch": 1}, lambda: release.wait(5) and "batch")
        with pytest.raises(RuntimeError, match="still pending"):
            p.start(4, [6], {}, lambda: "other")
        with pytest.raises(RuntimeError, match="for step 3, not 2"):
            p.take(2)
        release.set()
        assert p.wait() >= 0.0
        got = p.take(3)
        assert got.indices == [4, 5] and got.sampler_state == {"epoch": 1} and got.result() == "batch"
        assert got.finished is not None and got.finished >= got.started
        assert p.take(4) is None and p.wait() == 0.0
    finally:
        p.close()


def test_a_failed_generation_waits_quietly_and_raises_in_the_step_that_takes_it():
    p = RolloutPrefetcher()
    try:
        def boom():
            raise OSError("server gone")

        p.start(2, [0], {}, boom)
        p.wait()  # before a sync: must not raise
        with pytest.raises(OSError, match="server gone"):
            p.take(2).result()
    finally:
        p.close()
