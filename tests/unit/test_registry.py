"""rlkit.registry: one Registry behind every extension point.

Each kind (advantage estimators, losses, regularizers, rewards, rollout engines) is checked
through its public aliases: names with did-you-mean, import paths, duplicate and wrong-kind
registrations. The signature rules and messages are checked on throwaway registries.
"""

from __future__ import annotations

import sys

import pytest
import torch

import rewards
from rewards import available_rewards, get_reward, register_reward
from rlkit.algorithms import UnknownNameError as PackageUnknownNameError
from rlkit.algorithms.advantages import (
    ADVANTAGES,
    dr_grpo,
    get_advantage,
    register_advantage,
)
from rlkit.algorithms.advantages import UnknownNameError as AdvantagesUnknownNameError
from rlkit.algorithms.losses import (
    LOSSES,
    GRPOLoss,
    PolicyLoss,
    available_losses,
    build_loss,
    get_loss_class,
    register_loss,
)
from rlkit.algorithms.regularizers import (
    LLDS,
    REGULARIZERS,
    Regularizer,
    available_regularizers,
    build_regularizer,
    get_regularizer_class,
    register_regularizer,
)
from rlkit.registry import ParamError, Registry, Signature, UnknownNameError
from rlkit.rollout.engine import ENGINES, build_engine

# A user's own components, importable as `reg_user_ext:<name>` (see the fixture).
_USER_MODULE = '''
from rlkit.algorithms.losses import GRPOLoss
from rlkit.algorithms.regularizers import Regularizer


class PositiveNLL(GRPOLoss):
    def __init__(self, *, nll_coef: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.nll_coef = nll_coef


class ScaledReg(Regularizer):
    def __init__(self, *, scale: float):
        self.scale = scale


def shifted(rewards, group_ids, *, mask=None, shift=0.0):
    return rewards - rewards.mean() + shift


def per_char(prompts, completions, *, weight: float = 0.1, **_):
    return [weight * len(c) for c in completions]


class FakeEngine:
    def __init__(self, model_path, *, seed=0):
        self.model_path, self.seed = model_path, seed


NOT_CALLABLE = 3
'''


@pytest.fixture
def ext(tmp_path, monkeypatch):
    (tmp_path / "reg_user_ext.py").write_text(_USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import reg_user_ext

    yield reg_user_ext
    sys.modules.pop("reg_user_ext", None)


# ----------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("get", "typo", "kind", "close"),
    [
        (get_advantage, "rlooo", "advantage estimator", "rloo"),
        (get_loss_class, "grop", "loss", "grpo"),
        (get_regularizer_class, "lld", "regularizer", "llds"),
        (get_reward, "exact_numbr", "reward", "exact_number"),
        (ENGINES.get, "vlm", "engine kind", "vllm"),
    ],
    ids=["advantage", "loss", "regularizer", "reward", "engine"],
)
def test_unknown_name_suggests_the_close_one(get, typo, kind, close):
    with pytest.raises(UnknownNameError) as info:
        get(typo)
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    assert str(info.value).startswith(f"unknown {kind} '{typo}'; did you mean '{close}'? Registered: ")
    assert close in str(info.value).split("Registered: ", 1)[1]


def test_unknown_name_without_a_close_one_lists_all():
    with pytest.raises(UnknownNameError) as info:
        get_loss_class("ppo")
    assert str(info.value) == (
        "unknown loss 'ppo'. Registered: cispo, dapo, dr_grpo, grpo, gspo, hapo, reinforce; "
        "or give an import path 'pkg.module:ClassName'"
    )
    with pytest.raises(UnknownNameError, match="unknown engine kind 'sglang'"):
        build_engine("sglang", "some/model")


def test_unknown_name_error_is_one_class_reexported():
    assert AdvantagesUnknownNameError is UnknownNameError is PackageUnknownNameError


def test_names_are_sorted_and_set_on_the_entries():
    assert available_losses() == LOSSES.names() == sorted(LOSSES.names())
    assert "grpo" in ADVANTAGES and "ppo" not in LOSSES
    assert list(REGULARIZERS) == available_regularizers() == ["kdrl", "llds"]
    assert "overlong_penalty" in available_rewards()
    assert ENGINES.names() == ["hf", "server", "vllm"]
    assert get_advantage("grpo").estimator_name == "grpo"
    assert get_loss_class("dapo").loss_name == "dapo"
    assert get_regularizer_class("llds").name == "llds"
    assert get_reward("exact_number").reward_name == "exact_number"


# ----------------------------------------------------------------------------- import paths


def test_import_path_resolves_each_kind(ext):
    names_before = [r.names() for r in (ADVANTAGES, LOSSES, REGULARIZERS, rewards.REWARDS, ENGINES)]

    loss = build_loss("reg_user_ext:PositiveNLL", nll_coef=0.5, clip_high=0.28)
    assert type(loss) is ext.PositiveNLL and loss.nll_coef == 0.5 and loss.clip_high == 0.28

    assert get_regularizer_class("reg_user_ext:ScaledReg") is ext.ScaledReg
    assert build_regularizer("reg_user_ext:ScaledReg", scale=2.0).scale == 2.0

    fn = get_advantage("reg_user_ext:shifted")
    assert fn is ext.shifted and fn.needs_group is True  # the declared default
    # rewards [1, 3]: mean 2 -> [-1, 1], + shift 1 -> [0, 2]
    torch.testing.assert_close(fn(torch.tensor([1.0, 3.0]), torch.tensor([0, 0]), shift=1.0),
                               torch.tensor([0.0, 2.0]))

    assert get_reward("reg_user_ext:per_char") is ext.per_char
    assert rewards.REWARDS.bind("reg_user_ext:per_char", {"weight": 1.0})([""], ["abcd"]) == [4.0]

    # max_model_len is a vLLM-only setting this engine does not take: dropped, not passed.
    engine = build_engine("reg_user_ext:FakeEngine", "model/dir", seed=3, max_model_len=512)
    assert type(engine) is ext.FakeEngine and (engine.model_path, engine.seed) == ("model/dir", 3)

    # Resolving a path registers nothing.
    assert [r.names() for r in (ADVANTAGES, LOSSES, REGULARIZERS, rewards.REWARDS, ENGINES)] == names_before


@pytest.mark.parametrize("registry", [ADVANTAGES, LOSSES, REGULARIZERS, rewards.REWARDS, ENGINES],
                         ids=lambda r: r.kind)
def test_import_path_errors_say_what_failed(registry, ext):
    with pytest.raises(ValueError, match="cannot import module 'no_such_pkg.mod'"):
        registry.get("no_such_pkg.mod:Thing")
    with pytest.raises(ValueError, match="module 'reg_user_ext' has no attribute 'Nope'"):
        registry.get("reg_user_ext:Nope")
    with pytest.raises(ValueError, match="must look like 'pkg.module:"):
        registry.get(":Thing")
    with pytest.raises(TypeError, match=f"{registry.kind} 'reg_user_ext:NOT_CALLABLE' is 3, not a"):
        registry.get("reg_user_ext:NOT_CALLABLE")


def test_import_path_of_the_wrong_kind_is_refused(ext):
    with pytest.raises(TypeError, match="not a subclass of rlkit.algorithms.losses.PolicyLoss"):
        get_loss_class("reg_user_ext:ScaledReg")
    with pytest.raises(TypeError, match="not a subclass of rlkit.algorithms.regularizers.Regularizer"):
        get_regularizer_class("reg_user_ext:PositiveNLL")
    with pytest.raises(TypeError, match="reward 'reg_user_ext:FakeEngine' is .*, not a function"):
        get_reward("reg_user_ext:FakeEngine")


# ----------------------------------------------------------------------------- registration


def _estimator(rewards, group_ids, *, mask=None):
    return rewards


def _reward(prompts, completions, **_):
    return [0.0] * len(completions)


class _OtherLoss(PolicyLoss):
    pass


class _OtherReg(Regularizer):
    pass


class _OtherEngine:
    def __init__(self, model_path):
        self.model_path = model_path


@pytest.mark.parametrize(
    ("register", "name", "obj", "owner"),
    [
        (register_advantage, "grpo", _estimator, "rlkit.algorithms.advantages.grpo"),
        (register_loss, "grpo", _OtherLoss, "rlkit.algorithms.losses.GRPOLoss"),
        (register_regularizer, "llds", _OtherReg, "rlkit.algorithms.regularizers.LLDS"),
        (register_reward, "exact_number", _reward, "rewards.math.exact_number"),
        (ENGINES.register, "hf", _OtherEngine, "rlkit.rollout.hf_engine.HFEngine"),
    ],
    ids=["advantage", "loss", "regularizer", "reward", "engine"],
)
def test_a_second_object_under_a_taken_name_is_refused(register, name, obj, owner):
    with pytest.raises(ValueError, match=f"'{name}' is already registered by {owner}"):
        register(name)(obj)


def test_the_same_object_again_is_fine():
    # A module imported twice registers its entries again.
    assert register_loss("grpo")(GRPOLoss) is GRPOLoss
    assert register_regularizer("llds")(LLDS) is LLDS
    assert get_loss_class("grpo") is GRPOLoss


@pytest.mark.parametrize(
    ("register", "obj", "message"),
    [
        (register_loss, LLDS, "loss 'x' is <class .*LLDS'>, not a subclass of rlkit.algorithms.losses.PolicyLoss"),
        (register_loss, object, "not a subclass of rlkit.algorithms.losses.PolicyLoss"),
        (register_regularizer, GRPOLoss, "not a subclass of rlkit.algorithms.regularizers.Regularizer"),
        (register_advantage, GRPOLoss, "advantage estimator 'x' is <class .*GRPOLoss'>, not a function"),
        (register_reward, 3, "reward 'x' is 3, not a function"),
    ],
    ids=["loss<-regularizer", "loss<-object", "regularizer<-loss", "advantage<-class", "reward<-int"],
)
def test_the_wrong_kind_of_object_is_refused(register, obj, message):
    with pytest.raises(TypeError, match=message):
        register("x")(obj)
    assert "x" not in ADVANTAGES and "x" not in LOSSES and "x" not in REGULARIZERS
    assert "x" not in rewards.REWARDS


def test_declared_attributes():
    def grouped(rewards, group_ids, *, mask=None):
        return rewards

    def ungrouped(rewards, group_ids, *, mask=None):
        return rewards

    try:
        assert register_advantage("_t_grouped")(grouped).needs_group is True  # the default
        assert register_advantage("_t_ungrouped", needs_group=False)(ungrouped).needs_group is False
    finally:
        ADVANTAGES.unregister("_t_grouped")
        ADVANTAGES.unregister("_t_ungrouped")
    with pytest.raises(TypeError, match="no advantage estimator declares needs_groups; declared "
                                        "attributes: needs_group"):
        ADVANTAGES.register("_t", needs_groups=False)
    # A class registry: the attributes its base class declares.
    with pytest.raises(TypeError, match="no loss declares needs_group"):
        LOSSES.register("_t", needs_group=True)

    class Displacing(Regularizer):
        pass

    try:
        REGULARIZERS.register("_t_displacing", needs_trainer_old_logprobs=True)(Displacing)
        assert Displacing.needs_trainer_old_logprobs is True
        assert Regularizer.needs_trainer_old_logprobs is False
    finally:
        REGULARIZERS.unregister("_t_displacing")


# ----------------------------------------------------------------------------- params


def test_class_params_follow_kwargs_up_the_mro():
    class Base:
        def __init__(self, *, a=1, b):
            pass

    class Mid(Base):
        def __init__(self, *, c=2, **kwargs):
            super().__init__(**kwargs)

    class Leaf(Mid):  # no __init__ of its own
        pass

    class Closed(Base):  # no **kwargs: Base's params are not reachable
        def __init__(self, *, d=0):
            super().__init__(b=0)

    reg = Registry("widget", base=Base)
    assert reg.signature(Leaf) == Signature(accepted=("c", "a", "b"), required=("b",))
    assert reg.signature(Closed) == Signature(accepted=("d",), required=())


def test_function_params_skip_the_calling_convention_and_the_catch_all():
    def reward(prompts, completions, answer, *, max_len, cache_len=1, **_):
        return []

    reg = Registry("reward", fixed=("prompts", "completions"))
    assert reg.signature(reward) == Signature(accepted=("answer", "max_len", "cache_len"), required=("max_len",))
    assert ADVANTAGES.signature(get_advantage("grpo")) == Signature(accepted=("scale", "eps"), required=())
    assert ADVANTAGES.signature(get_advantage("rloo")).accepted == ()


def test_param_messages_name_the_path_the_close_one_and_the_choices():
    reg: Registry = Registry("widget", fixed=("x",))

    @reg.register("w")
    def widget(x, *, size, colour="red"):
        return (x, size, colour)

    with pytest.raises(ParamError) as info:
        reg.check_params("w", {"size": 1, "colr": "blue"}, path="widgets.0.params")
    assert str(info.value) == (
        "widgets.0.params.colr: unknown parameter of widget 'w' (widget); did you mean 'colour'? "
        "Accepted: colour, size."
    )
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)
    with pytest.raises(ParamError) as info:
        reg.check_params("w", {"zzz": 1})
    assert str(info.value) == "params.zzz: unknown parameter of widget 'w' (widget). Accepted: colour, size."
    with pytest.raises(ParamError) as info:
        reg.check_params("w", {}, path="widgets.0.params")
    assert str(info.value) == (
        "widgets.0.params.size: required parameter of widget 'w' (widget) is missing; "
        "set widgets.0.params.size"
    )
    assert reg.bind("w", {"size": 2})(0) == (0, 2, "red")


def test_bind_gives_the_component_with_its_params():
    rewards_, groups = torch.tensor([1.0, 0.0, 2.0, 5.0]), torch.tensor([0, 0, 1, 1])
    grpo_none = ADVANTAGES.bind("grpo", {"scale": "none"}, path="advantage.params")
    torch.testing.assert_close(grpo_none(rewards_, groups), dr_grpo(rewards_, groups))
    loss = LOSSES.bind("dapo", {"clip_high": 0.3}, path="loss.params")()
    assert type(loss).__name__ == "DAPOLoss" and loss.clip_high == 0.3 and loss.agg_mode == "token_mean"
    with pytest.raises(ParamError, match=r"^loss.params.clip_hgh: unknown parameter of loss 'dapo' "
                                         r"\(DAPOLoss\); did you mean 'clip_high'\?"):
        LOSSES.bind("dapo", {"clip_hgh": 0.3}, path="loss.params")
