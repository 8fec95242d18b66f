"""The DeepSpeed config rlkit builds from a recipe's `trainer` section (`_ds_config`), the
optimizer it hands DeepSpeed (`build_optimizer`), and the offload checks at config load.

`trainer.offload` is the only way to turn ZeRO-Offload on: the accelerate launch files only
select DeepSpeed (docs/scaling.md). No GPU here, so what runs on one is not checked: these pin
the dict DeepSpeed receives and the refusals of stages that cannot offload.
"""

from __future__ import annotations

import pytest
import torch

from rlkit.config import ConfigError, config_from_dict
from rlkit.trainer.deepspeed import _ds_config, build_optimizer

CPU_PINNED = {"device": "cpu", "pin_memory": True}


def _trainer(**fields):
    return config_from_dict({"model": {"name_or_path": "x"}, "trainer": fields}).trainer


def test_no_offload_by_default():
    tcfg = _trainer()
    assert tcfg.offload == "none"
    cfg = _ds_config(tcfg, bf16=False)
    assert cfg["zero_optimization"] == {"stage": 2}
    assert "zero_force_ds_cpu_optimizer" not in cfg  # DeepSpeed's guard stays on


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_offload_optimizer(stage):
    cfg = _ds_config(_trainer(zero_stage=stage, offload="optimizer"), bf16=True)
    zero = cfg["zero_optimization"]
    assert zero["stage"] == stage
    assert zero["offload_optimizer"] == CPU_PINNED
    assert "offload_param" not in zero
    assert cfg["zero_force_ds_cpu_optimizer"] is False  # accelerate must not rebuild our DeepSpeedCPUAdam
    assert cfg["bf16"] == {"enabled": True}
    assert ("stage3_gather_16bit_weights_on_model_save" in zero) == (stage == 3)


def test_offload_optimizer_and_params():
    cfg = _ds_config(_trainer(zero_stage=3, offload="optimizer_and_params"), bf16=True)
    assert cfg["zero_optimization"] == {
        "stage": 3,
        "stage3_gather_16bit_weights_on_model_save": True,
        "offload_optimizer": CPU_PINNED,
        "offload_param": CPU_PINNED,
    }
    assert cfg["zero_force_ds_cpu_optimizer"] is False


def test_the_rest_of_the_dict_does_not_depend_on_offload():
    base = _ds_config(_trainer(zero_stage=3, max_grad_norm=0.5), bf16=False)
    off = _ds_config(_trainer(zero_stage=3, max_grad_norm=0.5, offload="optimizer_and_params"), bf16=False)
    for cfg in (base, off):
        cfg.pop("zero_optimization")
        cfg.pop("zero_force_ds_cpu_optimizer", None)
    assert base == off and base["gradient_clipping"] == 0.5


@pytest.mark.parametrize(("fields", "fragments"), [
    pytest.param({"zero_stage": 0, "offload": "optimizer"},
                 ["config error at trainer.offload: 'optimizer' needs trainer.zero_stage 1, 2 or 3", "got 0",
                  "trainer.offload: none"], id="optimizer-at-stage-0"),
    pytest.param({"zero_stage": 2, "offload": "optimizer_and_params"},
                 ["config error at trainer.offload: 'optimizer_and_params' needs trainer.zero_stage 3", "got 2",
                  "or trainer.offload: optimizer"], id="params-at-stage-2"),
    pytest.param({"zero_stage": 0, "offload": "optimizer_and_params"},
                 ["'optimizer_and_params' needs trainer.zero_stage 3", "got 0", "or trainer.offload: none"],
                 id="params-at-stage-0"),
    pytest.param({"offload": "cpu"},
                 ["config error at trainer.offload: got 'cpu'", "'none', 'optimizer' or 'optimizer_and_params'"],
                 id="unknown-value"),
])
def test_offload_that_the_stage_cannot_do_is_refused(fields, fragments):
    with pytest.raises(ConfigError) as err:
        _trainer(**fields)
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))


def test_offload_is_also_checked_when_set_by_an_override():
    # validate_assignment: `trainer.zero_stage=0` on a recipe with offload fails the same way
    tcfg = _trainer(zero_stage=1, offload="optimizer")
    with pytest.raises(ValueError, match="'optimizer' needs trainer.zero_stage 1, 2 or 3"):
        tcfg.zero_stage = 0


def test_optimizer_without_offload_is_torch_fused_adamw():
    tcfg = _trainer(learning_rate=3e-4, adam_betas=(0.8, 0.95), weight_decay=0.1)
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(3))], tcfg)
    assert type(opt) is torch.optim.AdamW
    group = opt.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"], group["fused"]) == (
        3e-4, (0.8, 0.95), 1e-8, 0.1, True)


def test_zero3_is_refused_before_anything_starts():
    """ZeRO-3 cannot train yet (the chunked logprob pass reads the output weight outside its
    module, where ZeRO-3 keeps it an empty shard): build_accelerator refuses it first thing,
    naming the field and the stage to use, and builds no Accelerator."""
    from accelerate.state import AcceleratorState

    from rlkit.trainer.deepspeed import build_accelerator

    cfg = config_from_dict({"model": {"name_or_path": "x"}, "trainer": {"zero_stage": 3}})
    before = dict(AcceleratorState._shared_state)
    with pytest.raises(ConfigError, match=r"trainer.zero_stage: 3 does not train in rlkit yet.*zero_stage: 2"):
        build_accelerator(cfg.trainer, cfg.model, [], "/tmp/unused")
    assert AcceleratorState._shared_state == before  # refused before accelerate set anything up
