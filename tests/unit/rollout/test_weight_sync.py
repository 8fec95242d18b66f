"""trainer_weights_for_engine: HF checkpoint names and merged LoRA weights (tiny model, no vLLM)."""

import contextlib
import copy

import pytest
import torch
from torch import nn

from rlkit.rollout.weight_sync import trainer_weights_for_engine


@pytest.fixture()
def tiny_model(tiny_model_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)


def _expected(model: nn.Module) -> dict[str, torch.Tensor]:
    """What vLLM's loader expects: the checkpoint tensors, tied lm_head given once."""
    sd = model.state_dict()
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight")
    return sd


def test_plain_model_yields_checkpoint_names(tiny_model):
    got = dict(trainer_weights_for_engine(tiny_model))
    want = _expected(tiny_model)
    assert sorted(got) == sorted(want)
    for name, t in want.items():
        assert torch.equal(got[name], t), name
    # no copies for a plain model: the engine reads the trainer's storage
    assert got["model.norm.weight"].data_ptr() == tiny_model.model.norm.weight.data_ptr()


def test_wrapped_model_is_unwrapped(tiny_model):
    class Wrapper(nn.Module):  # what DeepSpeedEngine / DDP look like: `.module`
        def __init__(self, m):
            super().__init__()
            self.module = m

    got = dict(trainer_weights_for_engine(Wrapper(tiny_model)))
    assert sorted(got) == sorted(_expected(tiny_model))


def test_lora_yields_merged_weights_and_keeps_adapter_unmerged(tiny_model):
    from peft import LoraConfig, get_peft_model

    reference = copy.deepcopy(tiny_model)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                     init_lora_weights=False)  # random B != 0, so the merge is not a no-op
    peft_model = get_peft_model(tiny_model, cfg)
    got = dict(trainer_weights_for_engine(peft_model))

    merged = get_peft_model(reference, cfg)
    merged.load_state_dict(peft_model.state_dict())
    want = _expected(merged.merge_and_unload())
    assert sorted(got) == sorted(want)
    for name, t in want.items():
        torch.testing.assert_close(got[name], t, rtol=0, atol=1e-6, msg=name)
    q = "model.layers.0.self_attn.q_proj.weight"
    base_q = peft_model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    assert not torch.allclose(got[q], base_q)  # the delta is really in
    # the trainer keeps training an unmerged adapter
    assert not peft_model.base_model.model.model.layers[0].self_attn.q_proj.merged


def test_zero3_path_gathers_partitioned_params(tiny_model, monkeypatch):
    """ZeRO-3 cannot run here; check the guard: partitioned params are gathered, then cloned."""
    import deepspeed

    class Status:  # stands in for deepspeed's ZeroParamStatus
        name = "NOT_AVAILABLE"

    for p in tiny_model.parameters():
        p.ds_id = 0
        p.ds_status = Status()
    gathered: list[int] = []

    @contextlib.contextmanager
    def fake_gathered(params, modifier_rank=None):
        assert modifier_rank is None  # read-only gather: no rank writes back
        gathered.extend(id(p) for p in params)
        yield

    monkeypatch.setattr(deepspeed.zero, "GatheredParameters", fake_gathered)
    got = dict(trainer_weights_for_engine(tiny_model))
    assert sorted(got) == sorted(_expected(tiny_model))
    assert set(gathered) == {id(p) for p in tiny_model.parameters()}
    # clones: the shard may be released after the gather block
    assert got["model.norm.weight"].data_ptr() != tiny_model.model.norm.weight.data_ptr()
