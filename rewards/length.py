"""Length shaping rewards."""

from __future__ import annotations

from rewards import register_reward


@register_reward("overlong_penalty")
def overlong_penalty(prompts, completions, completion_lengths, *, max_len: int, cache_len: int, **_) -> list[float]:
    """DAPO soft overlong punishment (arXiv 2503.14476, eq. 13), in tokens.

    0 up to `max_len - cache_len`, then a linear ramp down to -1 at `max_len`, -1 beyond.
    """
    if cache_len <= 0 or cache_len > max_len:
        raise ValueError(f"overlong_penalty: need 0 < cache_len <= max_len, got cache_len={cache_len}, max_len={max_len}")
    start = max_len - cache_len
    out = []
    for n in completion_lengths:
        if n <= start:
            out.append(0.0)
        elif n <= max_len:
            out.append((start - n) / cache_len)
        else:
            out.append(-1.0)
    return out
