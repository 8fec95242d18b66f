"""RolloutBatch assembly and SamplingConfig validation (no engine needed)."""

import pytest
import torch

from rlkit.rollout.types import RolloutBatch, SamplingConfig


def test_from_rows_pads_masks_and_groups():
    # B=2 prompts, G=2: rows 0,1 belong to prompt 0, rows 2,3 to prompt 1.
    batch = RolloutBatch.from_rows(
        prompt_ids=[[1, 2], [3]],
        prompt_texts=["a", "b"],
        group_size=2,
        token_ids=[[5, 6, 2], [7], [8, 9], []],
        logprobs=[[-0.1, -0.2, -0.3], [-1.0], [-0.5, -0.25], []],
        texts=["x", "y", "z", ""],
        finish_reason=["stop", "length", "length", "abort"],
        pad_id=0,
    )
    assert batch.completion_ids.tolist() == [[5, 6, 2], [7, 0, 0], [8, 9, 0], [0, 0, 0]]
    assert batch.completion_mask.tolist() == [
        [True, True, True], [True, False, False], [True, True, False], [False, False, False]
    ]
    # logprobs are 0 wherever the mask is False
    assert batch.engine_logprobs[1].tolist() == [-1.0, 0.0, 0.0]
    assert batch.engine_logprobs.dtype == torch.float32
    assert batch.group_ids.tolist() == [0, 0, 1, 1]
    assert batch.prompt_index.tolist() == [0, 0, 1, 1]
    assert batch.completion_lengths.tolist() == [3, 1, 2, 0]
    assert (batch.num_prompts, batch.group_size, batch.num_rows) == (2, 2, 4)
    assert batch.rewards is None


def _two_by_two(version):
    batch = RolloutBatch.from_rows(prompt_ids=[[1], [2]], prompt_texts=["a", "b"], group_size=2,
                                   token_ids=[[5], [6], [7], [8]], logprobs=[[-1.0]] * 4, texts=["w", "x", "y", "z"],
                                   finish_reason=["stop"] * 4, pad_id=0)
    batch.weight_version = version
    return batch


def test_weight_version_survives_selection_and_concat():
    """The server engine tags each batch with the weights that sampled it; dynamic sampling's
    select/concat keep it (the oldest when batches differ, None when any has none)."""
    assert _two_by_two(None).weight_version is None  # engines that do not count versions
    assert _two_by_two(3).select_groups([1]).weight_version == 3
    assert RolloutBatch.concat([_two_by_two(3), _two_by_two(3)], pad_id=0).weight_version == 3
    assert RolloutBatch.concat([_two_by_two(4), _two_by_two(3)], pad_id=0).weight_version == 3
    assert RolloutBatch.concat([_two_by_two(4), _two_by_two(None)], pad_id=0).weight_version is None


def test_from_rows_rejects_mismatched_logprobs():
    with pytest.raises(ValueError, match="logprobs"):
        RolloutBatch.from_rows(prompt_ids=[[1]], prompt_texts=["a"], group_size=1,
                               token_ids=[[1, 2]], logprobs=[[-1.0]], texts=["x"],
                               finish_reason=["stop"], pad_id=0)


def test_from_rows_rejects_wrong_row_count():
    with pytest.raises(ValueError, match="expected 4 rows"):
        RolloutBatch.from_rows(prompt_ids=[[1], [2]], prompt_texts=["a", "b"], group_size=2,
                               token_ids=[[1]], logprobs=[[-1.0]], texts=["x"],
                               finish_reason=["stop"], pad_id=0)


def test_sampling_config_validation():
    assert SamplingConfig(greedy=True, temperature=0.0).effective_temperature == 0.0
    assert SamplingConfig(temperature=0.7).effective_temperature == 0.7
    with pytest.raises(ValueError, match="greedy=True"):
        SamplingConfig(temperature=0.0)
    with pytest.raises(ValueError, match="top_k"):
        SamplingConfig(top_k=0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)
