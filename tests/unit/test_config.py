"""Recipe config: every bad config fails with one readable message; every shipped YAML validates.

Each bad-config case asserts the message text: the full field path, the bad value, what is
accepted, and the close valid key for a typo (issue 2, acceptance 3).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from rlkit.config import (
    ConfigError,
    RecipeConfig,
    apply_overrides,
    config_from_dict,
    dump_config,
    load_config,
)

REPO = Path(__file__).resolve().parents[2]
RECIPE_YAMLS = sorted((REPO / "recipes" / "configs").glob("*.yaml"))


def _cfg(**sections) -> dict:
    """A minimal valid raw config plus the given sections."""
    return {"model": {"name_or_path": "smollm2-135m"}, **sections}


def _error(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    return str(info.value)


# ----------------------------------------------------------------------------- bad configs

# (id, raw config, fragments the message must contain)
BAD_CONFIGS = [
    (
        "typo_top_level",
        _cfg(trainr={"max_steps": 3}),
        [
            "config error at trainr: unknown key",
            "did you mean 'trainer'?",
            "Valid keys here:",
            "rollout",
        ],
    ),
    (
        "typo_nested",
        _cfg(rollout={"temprature": 0.7}),
        ["config error at rollout.temprature: unknown key", "did you mean 'temperature'?", "top_p"],
    ),
    (
        "typo_in_list_item",
        _cfg(rewards=[{"name": "exact_number", "wieght": 2.0}]),
        [
            "config error at rewards.0.wieght: unknown key",
            "did you mean 'weight'?",
            "name, weight, params",
        ],
    ),
    (
        "unknown_key_without_close_match",
        _cfg(model={"name_or_path": "x", "lora": {"rank": 8}}),
        [
            "config error at model.lora.rank: unknown key.",
            "Valid keys here: r, alpha, dropout, target_modules.",
        ],
    ),
    (
        "wrong_type_string_for_int",
        _cfg(trainer={"max_steps": "many"}),
        ["config error at trainer.max_steps", "got 'many'", "valid integer"],
    ),
    (
        "negative_learning_rate",
        _cfg(trainer={"learning_rate": -1e-3}),
        ["config error at trainer.learning_rate", "got -0.001", "greater than 0"],
    ),
    (
        "group_size_1_with_grpo",
        _cfg(rollout={"group_size": 1}, advantage={"name": "grpo"}),
        [
            "rollout.group_size is 1",
            "advantage.name 'grpo'",
            "set rollout.group_size >= 2",
            "reinforce_pp",
        ],
    ),
    (
        "unknown_loss",
        _cfg(loss={"name": "grop"}),
        [
            "loss.name: unknown value 'grop'",
            "did you mean 'grpo'?",
            "Known losses:",
            "dapo",
            "gspo",
        ],
    ),
    (
        "unknown_advantage",
        _cfg(advantage={"name": "rlooo"}),
        [
            "advantage.name: unknown value 'rlooo'",
            "did you mean 'rloo'?",
            "Known advantage estimators:",
            "grpo",
        ],
    ),
    (
        "unknown_reward",
        _cfg(rewards=[{"name": "exact_number"}, {"name": "exact_numbr"}]),
        [
            "rewards.1.name: unknown value 'exact_numbr'",
            "did you mean 'exact_number'?",
            "Known reward functions:",
            "math_accuracy",
        ],
    ),
    (
        "missing_model_section",
        {"trainer": {"max_steps": 3}},
        ["config error at model: required field is missing", "model.name_or_path"],
    ),
    (
        "missing_model_name_or_path",
        {"model": {"dtype": "bfloat16"}},
        ["config error at model.name_or_path: required field is missing", "smollm2-135m"],
    ),
    (
        "model_not_a_mapping",
        {"model": "smollm2-135m"},
        ["config error at model", "got 'smollm2-135m'", "valid dictionary"],
    ),
    (
        "jsonl_without_path",
        _cfg(data={"name": "jsonl"}),
        ["config error: data.path is required when data.name is 'jsonl'"],
    ),
    (
        "max_operand_below_min_operand",
        _cfg(data={"min_operand": 5, "max_operand": 2}),
        ["data.max_operand (2) must be >= data.min_operand (5)"],
    ),
    (
        "top_p_out_of_range",
        _cfg(rollout={"top_p": 1.5}),
        ["config error at rollout.top_p", "got 1.5", "less than or equal to 1"],
    ),
    (
        "bad_zero_stage",
        _cfg(trainer={"zero_stage": 4}),
        ["config error at trainer.zero_stage", "got 4", "0, 1, 2 or 3"],
    ),
    (
        "unknown_literal_engine",
        _cfg(rollout={"engine": "sglang"}),
        ["config error at rollout.engine", "got 'sglang'", "'vllm', 'hf', 'server' or 'auto'"],
    ),
    (
        "server_engine_without_servers",
        _cfg(rollout={"engine": "server"}),
        ["config error at rollout.servers", "rollout.engine is server", "non-empty list", "http(s)://host:port"],
    ),
    (
        "server_url_without_scheme",
        _cfg(rollout={"engine": "server", "servers": ["127.0.0.1:8000"]}),
        ["config error at rollout.servers.0", "'127.0.0.1:8000' is not a server URL", "http(s)://host:port"],
    ),
    (
        "negative_server_retries",
        _cfg(rollout={"engine": "server", "servers": ["http://127.0.0.1:8000"], "server_retries": -1}),
        ["config error at rollout.server_retries", "got -1"],
    ),
    (
        "nccl_weight_transfer_on_an_in_process_engine",
        _cfg(rollout={"engine": "vllm", "weight_transfer": "nccl"}),
        ["config error at rollout.weight_transfer", "needs rollout.engine: server (got vllm)",
         "rollout.weight_transfer: file"],
    ),
    (
        "nccl_weight_transfer_on_the_auto_engine",
        _cfg(rollout={"weight_transfer": "nccl"}),
        ["config error at rollout.weight_transfer", "needs rollout.engine: server (got auto)"],
    ),
    (
        "unknown_weight_transfer",
        _cfg(rollout={"engine": "server", "servers": ["http://127.0.0.1:8000"], "weight_transfer": "ipc"}),
        ["config error at rollout.weight_transfer", "got 'ipc'", "'file' or 'nccl'"],
    ),
    (
        "async_on_an_in_process_engine",
        _cfg(rollout={"engine": "vllm", "async": True}),
        ["config error at rollout.async", "need rollout.engine: server (got vllm)", "rollout.async: false"],
    ),
    (
        "max_staleness_not_built",
        _cfg(rollout={"engine": "server", "servers": ["http://127.0.0.1:8000"], "async": True, "max_staleness": 2}),
        ["config error at rollout.max_staleness", "2 is not built", "0 (sync) or 1"],
    ),
    (
        "async_without_the_engine_logprobs",
        _cfg(rollout={"engine": "server", "servers": ["http://127.0.0.1:8000"], "async": True},
             trainer={"use_engine_logprobs": False}),
        ["config error at trainer.use_engine_logprobs", "one sync behind", "use_engine_logprobs: true"],
    ),
    (
        "unknown_literal_in_list",
        _cfg(logging={"trackers": ["tensorboard"]}),
        ["config error at logging.trackers.0", "got 'tensorboard'", "'wandb' or 'mlflow'"],
    ),
    (
        "negative_kl_coef",
        # The loss is built at validation: its constructor's refusal, at the params' path.
        _cfg(loss={"name": "grpo", "params": {"kl_coef": -0.1}}),
        ["config error at loss.params: kl_coef must be >= 0, got -0.1"],
    ),
    (
        "unknown_agg_mode",
        _cfg(loss={"name": "dapo", "params": {"agg_mode": "token_sum"}}),
        ["config error at loss.params: unknown agg_mode 'token_sum'; choose one of token_mean"],
    ),
    (
        "unknown_loss_param",
        _cfg(loss={"name": "grpo", "params": {"clip_hgh": 0.3}}),
        [
            "config error at loss.params.clip_hgh: unknown parameter of loss 'grpo' (GRPOLoss); "
            "did you mean 'clip_high'? Accepted: agg_mode, clip_high, clip_low, dual_clip,",
        ],
    ),
    (
        "unknown_advantage_param",
        _cfg(advantage={"name": "grpo", "params": {"scal": "batch"}}),
        [
            "config error at advantage.params.scal: unknown parameter of advantage estimator 'grpo'; "
            "did you mean 'scale'? Accepted: eps, scale."
        ],
    ),
    (
        "advantage_without_params",
        _cfg(advantage={"name": "dr_grpo", "params": {"scale": "none"}}),
        ["config error at advantage.params.scale: unknown parameter of advantage estimator "
         "'dr_grpo'. Accepted: (none)."],
    ),
    (
        "unknown_regularizer_param",
        _cfg(regularizers=[{"name": "llds", "coef": 0.2, "params": {"gat": "action"}}],
             trainer={"mini_batches": 2, "use_engine_logprobs": False}),
        [
            "config error at regularizers.0.params.gat: unknown parameter of regularizer 'llds' "
            "(LLDS); did you mean 'gate'? Accepted: gate."
        ],
    ),
    (
        "bad_regularizer_value",
        _cfg(regularizers=[{"name": "llds", "coef": 0.2, "params": {"gate": "chunk"}}],
             trainer={"mini_batches": 2, "use_engine_logprobs": False}),
        ["config error at regularizers.0.params: unknown LLDS gate 'chunk'; choose one of action, response"],
    ),
    (
        "unknown_reward_param",
        _cfg(rewards=[{"name": "overlong_penalty", "params": {"max_len": 64, "cach_len": 8}}]),
        [
            "config error at rewards.0.params.cach_len: unknown parameter of reward 'overlong_penalty'; "
            "did you mean 'cache_len'? Accepted: cache_len, completion_lengths, max_len."
        ],
    ),
    (
        "missing_reward_param",
        _cfg(rewards=[{"name": "overlong_penalty", "params": {"max_len": 64}}]),
        [
            "config error at rewards.0.params.cache_len: required parameter of reward "
            "'overlong_penalty' is missing; set rewards.0.params.cache_len"
        ],
    ),
    (
        "reward_catch_all_accepts_no_setting",
        # exact_number takes `**_` for dataset columns; that does not make `foo` a setting.
        _cfg(rewards=[{"name": "exact_number", "params": {"foo": 1}}]),
        ["config error at rewards.0.params.foo: unknown parameter of reward 'exact_number'. Accepted: answer."],
    ),
    (
        "reward_import_path_param",
        _cfg(rewards=[{"name": "rewards.length:overlong_penalty", "params": {"max_len": 64, "cach_len": 8}}]),
        [
            "config error at rewards.0.params.cach_len: unknown parameter of reward "
            "'rewards.length:overlong_penalty' (overlong_penalty); did you mean 'cache_len'?"
        ],
    ),
    (
        "reward_import_path_missing_module",
        _cfg(rewards=[{"name": "no_such_pkg.mod:fn"}]),
        ["config error at rewards.0.name: reward 'no_such_pkg.mod:fn': cannot import module 'no_such_pkg.mod'"],
    ),
    (
        "loss_class_missing_module",
        _cfg(loss={"class": "no_such_pkg.mod:MyLoss"}),
        ["config error at loss.class: loss 'no_such_pkg.mod:MyLoss': cannot import module 'no_such_pkg.mod'"],
    ),
    (
        "loss_class_not_a_policy_loss",
        _cfg(loss={"class": "rlkit.algorithms.regularizers:LLDS"}),
        ["config error at loss.class: loss 'rlkit.algorithms.regularizers:LLDS' is ",
         "not a subclass of rlkit.algorithms.losses.PolicyLoss"],
    ),
    (
        "advantage_import_path_missing_attribute",
        _cfg(advantage={"name": "rlkit.algorithms.advantages:gae"}),
        ["config error at advantage.name: advantage estimator 'rlkit.algorithms.advantages:gae': "
         "module 'rlkit.algorithms.advantages' has no attribute 'gae'"],
    ),
    (
        "empty_rewards",
        _cfg(rewards=[]),
        ["config error at rewards", "got []", "at least 1 item"],
    ),
]


@pytest.mark.parametrize(
    ("raw", "fragments"), [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS]
)
def test_bad_config_message(raw, fragments):
    msg = _error(raw)
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in:\n{msg}"


def test_every_error_is_reported_at_once():
    # Two independent field errors: one message, one line each (fix everything in one go).
    msg = _error(_cfg(rollout={"top_p": 2.0}, trainer={"learning_rate": 0}))
    lines = msg.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("config error at rollout.top_p")
    assert lines[1].startswith("config error at trainer.learning_rate: got 0")


def test_group_rule_only_for_group_relative_estimators():
    # A batch-level estimator is fine with one sample per prompt; rloo needs a group too.
    cfg = config_from_dict(_cfg(rollout={"group_size": 1}, advantage={"name": "reinforce_pp"}))
    assert cfg.rollout.group_size == 1
    assert "advantage.name 'rloo'" in _error(
        _cfg(rollout={"group_size": 1}, advantage={"name": "rloo"})
    )


_USER_MODULE = """
from rlkit.algorithms.losses import GRPOLoss


class MyLoss(GRPOLoss):
    def __init__(self, *, nll_coef: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if nll_coef < 0:
            raise ValueError(f"nll_coef must be >= 0, got {nll_coef}")
        self.nll_coef = nll_coef


def my_reward(prompts, completions, answer, *, bonus: float, **_):
    return [bonus] * len(completions)
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "cfg_user_ext.py").write_text(_USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "cfg_user_ext"
    sys.modules.pop("cfg_user_ext", None)


def test_import_paths_are_resolved_and_their_params_checked(user_module):
    # A user loss and reward are named by import path and checked like the built-ins:
    # the loss is built (its own params and the inherited GRPO ones), the reward bound.
    cfg = config_from_dict(_cfg(
        rewards=[{"name": "rewards.math:exact_number"},
                 {"name": f"{user_module}:my_reward", "params": {"bonus": 0.5}}],
        loss={"class": f"{user_module}:MyLoss", "params": {"nll_coef": 0.1, "clip_high": 0.28}},
    ))
    assert cfg.rewards[0].name == "rewards.math:exact_number"
    assert cfg.loss.target == f"{user_module}:MyLoss"
    assert "config error at loss.params.nll_coeff: unknown parameter of loss " in _error(
        _cfg(loss={"class": f"{user_module}:MyLoss", "params": {"nll_coeff": 0.1}}))
    assert "config error at loss.params: nll_coef must be >= 0, got -1" in _error(
        _cfg(loss={"class": f"{user_module}:MyLoss", "params": {"nll_coef": -1}}))
    assert "config error at rewards.0.params.bonus: required parameter of reward" in _error(
        _cfg(rewards=[{"name": f"{user_module}:my_reward"}]))


def test_a_bad_loss_class_is_reported_at_loss_class():
    # loss.class replaces loss.name; an error in it is reported at loss.class.
    msg = _error(_cfg(loss={"name": "grpo", "class": "rlkit.algorithms.losses:GRPOLos"}))
    assert msg.startswith("config error at loss.class: loss 'rlkit.algorithms.losses:GRPOLos': module")


def test_defaults_of_a_minimal_config():
    cfg = config_from_dict(_cfg())
    assert cfg.model.name_or_path == "smollm2-135m"
    assert cfg.data.name == "arithmetic"
    assert cfg.advantage.name == "grpo" and cfg.loss.target == "grpo"
    assert [r.name for r in cfg.rewards] == ["math_accuracy"]


def test_nccl_weight_transfer_with_the_server_engine():
    assert config_from_dict(_cfg()).rollout.weight_transfer == "file"
    cfg = config_from_dict(_cfg(rollout={"engine": "server", "servers": ["http://10.0.0.2:8000"],
                                         "weight_transfer": "nccl"}))
    assert cfg.rollout.weight_transfer == "nccl"


# ----------------------------------------------------------------------------- overrides


def test_override_sets_nested_value():
    raw = apply_overrides(
        _cfg(trainer={"learning_rate": 1e-6, "max_steps": 7}), ["trainer.learning_rate=0.5"]
    )
    cfg = config_from_dict(raw)
    assert cfg.trainer.learning_rate == 0.5
    assert cfg.trainer.max_steps == 7  # siblings untouched


def test_override_parses_yaml_list_and_creates_sections():
    cfg = config_from_dict(apply_overrides(_cfg(), ["rollout.stop=[a,b]", "data.name=gsm8k"]))
    assert cfg.rollout.stop == ["a", "b"]
    assert cfg.data.name == "gsm8k"


def test_override_indexes_lists():
    raw = apply_overrides(
        _cfg(rewards=[{"name": "exact_number"}, {"name": "only_number"}]), ["rewards.1.weight=0.25"]
    )
    assert config_from_dict(raw).rewards[1].weight == 0.25


def test_override_value_is_validated_like_yaml():
    with pytest.raises(ConfigError, match=r"config error at trainer\.learning_rate: got -1"):
        config_from_dict(apply_overrides(_cfg(), ["trainer.learning_rate=-1"]))


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        (
            "trainer.learning_rate",
            "override 'trainer.learning_rate' is not of the form a.b.c=value",
        ),
        (
            "model.name_or_path.extra=1",
            "override 'model.name_or_path.extra': 'name_or_path' is not a section",
        ),
        (
            "regularizers=[{name: llds, coef:",
            "override 'regularizers=[{name: llds, coef:': the value is not valid YAML",
        ),
    ],
)
def test_bad_override(override, fragment):
    with pytest.raises(ConfigError) as info:
        apply_overrides(_cfg(), [override])
    assert fragment in str(info.value)


@pytest.mark.parametrize("override", ["rewards.5.weight=1", "rewards.name=x"])
def test_bad_list_index_override_is_a_config_error(override):
    with pytest.raises(ConfigError, match="rewards"):
        apply_overrides(_cfg(rewards=[{"name": "exact_number"}]), [override])


# ----------------------------------------------------------------------------- files


def test_load_config_with_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_cfg(trainer={"max_steps": 3})))
    cfg = load_config(path, ["trainer.max_steps=9"])
    assert cfg.trainer.max_steps == 9


def test_yaml_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- model\n- trainer\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: the top level must be a mapping of sections, got list"


def test_invalid_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: {name_or_path: x\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"config file not found: {path}"


def test_empty_file_reports_missing_model(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(ConfigError, match="config error at model: required field is missing"):
        load_config(path)


@pytest.mark.parametrize("path", RECIPE_YAMLS, ids=[p.name for p in RECIPE_YAMLS])
def test_shipped_recipe_validates(path):
    cfg = load_config(path)
    assert isinstance(cfg, RecipeConfig)
    # The resolved dump round-trips (what `rlkit validate --show` prints can be re-loaded).
    again = config_from_dict(yaml.safe_load(dump_config(cfg)))
    assert again == cfg


def test_recipe_glob_is_not_empty():
    # Guards the parametrization above: a moved directory must not turn it into zero tests.
    assert {"grpo_math_cpu.yaml", "grpo_math_gpu_1.yaml"} <= {p.name for p in RECIPE_YAMLS}


# ----------------------------------------------------------------------------- data.sampler


def test_sampler_section_defaults_typo_and_exact_fit():
    # Full VADE cases live in tests/unit/data/test_samplers.py; here the section's shape.
    cfg = config_from_dict(_cfg())
    assert cfg.data.sampler.name == "uniform" and cfg.data.sampler.params == {}
    assert "config error at data.sampler.nmae: unknown key; did you mean 'name'?" in _error(
        _cfg(data={"sampler": {"nmae": "vade"}}))
    # vade needs num_train >= prompts_per_step; equal is enough
    cfg = config_from_dict(_cfg(data={"num_train": 8, "sampler": {"name": "vade"}}, rollout={"prompts_per_step": 8}))
    assert cfg.data.sampler.name == "vade"
    assert "data.num_train (7) is smaller than rollout.prompts_per_step (8)" in _error(
        _cfg(data={"num_train": 7, "sampler": {"name": "vade"}}, rollout={"prompts_per_step": 8}))


# ----------------------------------------------------------------------------- advantage: values, answers

CPU_YAML = REPO / "recipes" / "configs" / "grpo_math_cpu.yaml"


def test_out_of_range_estimator_params_fail_at_validation():
    # The estimator runs once on a dummy batch at validation, so its own checks fail here.
    # (`advantage.params={}` drops the YAML's grpo `scale` first.)
    with pytest.raises(ConfigError) as info:
        load_config(CPU_YAML, ["advantage.name=riskpo", "advantage.params={}",
                               "advantage.params.alpha=0.9", "advantage.params.beta=0.1"])
    msg = str(info.value)
    assert msg.startswith("config error at advantage.params: riskpo: alpha must be < beta"), msg
    assert "alpha=0.9, beta=0.1" in msg
    assert "config error at advantage.params: grpo: scale must be one of 'group', 'batch', 'none'" in _error(
        _cfg(advantage={"name": "grpo", "params": {"scale": "bogus"}}))
    cfg = load_config(CPU_YAML, ["advantage.name=riskpo", "advantage.params={credit: std}"])
    assert cfg.advantage.params == {"credit": "std"}


def test_answer_extractor_is_required_by_estimators_that_cluster_answers():
    msg = _error(_cfg(advantage={"name": "copo"}))
    assert msg.startswith("config error at advantage.answer_extractor: advantage.name 'copo' clusters"), msg
    assert "last_number, math_verify" in msg
    cfg = load_config(CPU_YAML, ["advantage.name=copo", "advantage.answer_extractor=last_number",
                                 "advantage.params={global_form: prompt}"])
    assert cfg.advantage.answer_extractor == "last_number"
    assert config_from_dict(_cfg()).advantage.answer_extractor is None  # unused by grpo
    assert "config error at advantage.params: copo: global_form must be one of response, prompt" in _error(
        _cfg(advantage={"name": "copo", "answer_extractor": "math_verify", "params": {"global_form": "x"}}))


def test_unknown_answer_extractor_suggests_the_closest():
    msg = _error(_cfg(advantage={"name": "copo", "answer_extractor": "last_numbr"}))
    assert "config error at advantage.answer_extractor: unknown value 'last_numbr'; did you mean 'last_number'?" in msg
    assert "Known answer extractors: last_number, math_verify." in msg
    cfg = config_from_dict(_cfg(advantage={"name": "copo",
                                           "answer_extractor": "rlkit.algorithms.answers:last_number_answer"}))
    assert cfg.advantage.answer_extractor.endswith(":last_number_answer")


@pytest.mark.parametrize(("sections", "fragments"), [
    pytest.param({"token_weights": {"name": "thr", "params": {"p": 1.0}}},
                 ["token_weights.params", "p: must be in (-1, 1)", "flips the update"], id="thr-p-too-large"),
    pytest.param({"token_weights": {"name": "thr", "params": {"mode": "most"}}},
                 ["token_weights.params", "unknown THR mode 'most'", "reweight, only"], id="thr-mode"),
    pytest.param({"token_weights": {"name": "thr", "params": {"q": 0.5}}},
                 ["token_weights.params.q", "unknown parameter", "gate_beta"], id="thr-unknown-param"),
    pytest.param({"token_weights": {"name": "tht"}}, ["token_weights.name", "'tht'", "did you mean 'thr'"],
                 id="token-weights-typo"),
    pytest.param({"token_weights": {"name": "thr"}, "rollout": {"group_size": 1},
                  "advantage": {"name": "reinforce_pp"}},
                 ["token_weights.name", "group_size is 1", ">= 2"], id="thr-needs-groups"),
    pytest.param({"token_weights": {"name": "thr"}, "trainer": {"zero_stage": 3}},
                 ["token_weights.name", "ZeRO-3"], id="thr-zero3"),
    pytest.param({"loss": {"name": "hapo", "params": {"entropy_pivot": 1.0}}},
                 ["loss.params", "entropy_pivot must be in (0, 1)"], id="hapo-pivot"),
    pytest.param({"loss": {"name": "hapo", "params": {"entropy_stats": "step"}}},
                 ["loss.params", "'batch' or 'micro_batch'"], id="hapo-stats"),
    pytest.param({"advantage": {"name": "hapo_tlga", "params": {"fallback": 0}}},
                 ["advantage.params", "fallback must be > 0"], id="tlga-fallback"),
])
def test_token_level_methods_refuse_bad_settings(sections, fragments):
    msg = _error(_cfg(**sections))
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)


def test_token_level_methods_validate():
    cfg = config_from_dict(_cfg(token_weights={"name": "thr", "params": {"p": -0.5, "gate_beta": 1.0}},
                                loss={"name": "hapo"}, advantage={"name": "hapo_tlga"}))
    assert cfg.token_weights.params == {"p": -0.5, "gate_beta": 1.0} and cfg.loss.name == "hapo"


@pytest.mark.parametrize(("sections", "fragments"), [
    pytest.param({"regularizers": [{"name": "kdrl", "coef": 0.005}]},
                 ["regularizers.0 (kdrl)", "set model.teacher_model"], id="kdrl-without-teacher"),
    pytest.param({"model": {"name_or_path": "smollm2-135m", "teacher_model": "smollm2-135m"}},
                 ["model.teacher_model", "nothing uses a teacher", "kdrl"], id="teacher-unused"),
    pytest.param({"mixing": {"name": "hpt"}}, ["mixing.name", "'hpt' learns from demonstrations", "data.demo_field"],
                 id="hpt-without-demos"),
    pytest.param({"mixing": {"name": "relift"}}, ["mixing.name", "data.demo_field"], id="relift-without-demos"),
    pytest.param({"mixing": {"name": "paced", "params": {"switch_step": 5}}, "data": {"demo_field": "demo"}},
                 ["mixing.params.switch_step", "reverse stage", "kdrl"], id="paced-reverse-without-kdrl"),
    pytest.param({"mixing": {"name": "hbt"}}, ["mixing.name", "'hbt'", "did you mean 'hpt'"], id="mixing-typo"),
    pytest.param({"mixing": {"name": "hpt", "params": {"gamma": -1}}, "data": {"demo_field": "demo"}},
                 ["mixing.params", "gamma: must be >= 0"], id="hpt-gamma"),
    pytest.param({"mixing": {"name": "relift", "params": {"buffer_sz": 4}}, "data": {"demo_field": "demo"}},
                 ["mixing.params.buffer_sz", "did you mean 'buffer_size'"], id="relift-param-typo"),
    pytest.param({"regularizers": [{"name": "llds", "coef": 0.2, "schedule": "linear"}],
                  "trainer": {"mini_batches": 2, "use_engine_logprobs": False}},
                 ["regularizers.0.coef_end", "schedule is linear"], id="linear-without-end"),
    pytest.param({"regularizers": [{"name": "kdrl", "coef": 0.01, "params": {"kind": "k4"}}],
                  "model": {"name_or_path": "smollm2-135m", "teacher_model": "smollm2-135m"}},
                 ["regularizers.0.params", "unknown KL estimator 'k4'"], id="kdrl-kind"),
    pytest.param({"loss": {"name": "grpo", "params": {"pg_coef": -1}}}, ["loss.params", "pg_coef must be >= 0"],
                 id="pg-coef"),
])
def test_distillation_settings_are_checked(sections, fragments):
    msg = _error(_cfg(**sections))
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)


def test_distillation_configs_validate():
    cfg = config_from_dict(_cfg(
        model={"name_or_path": "smollm2-135m", "teacher_model": "smollm2-135m"},
        regularizers=[{"name": "kdrl", "coef": 0.005, "coef_end": 0.001, "schedule": "linear",
                       "params": {"kind": "k2", "mask": "incorrect"}}],
        mixing={"name": "paced", "params": {"switch_step": 10}}, data={"demo_field": "demo"},
        loss={"name": "grpo", "params": {"pg_coef": 0.0}}))
    assert cfg.mixing.name == "paced" and cfg.regularizers[0].coef_end == 0.001
    # PACED forward-only (switch_step past the run) needs no teacher
    config_from_dict(_cfg(mixing={"name": "paced", "params": {"switch_step": 1000}}, data={"demo_field": "demo"}))
