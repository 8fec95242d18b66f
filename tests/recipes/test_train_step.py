"""`train_step` called in-process on a tiny model with the transformers engine.

No `accelerate launch`: the test sets the single-process distributed environment itself, builds
the recipe's `Components` with its `setup()`, and checks the typed `StepResult` of real steps
(DeepSpeed ZeRO-2 on the CPU accelerator, real weight sync into the HF engine).
"""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path

import pytest
import torch

from rlkit.assets import tiny_model_dir
from rlkit.config import load_config

REPO = Path(__file__).resolve().parents[2]


def _recipe():
    spec = importlib.util.spec_from_file_location("grpo_math_recipe", REPO / "recipes/grpo_math.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def _process_group():
    """The environment `accelerate launch` would give one DeepSpeed process. The process group
    it starts lives until the test process ends (DeepSpeed keeps a handle on it)."""
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "ACCELERATE_USE_DEEPSPEED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _reset_accelerate() -> None:
    """accelerate keeps one process-wide state: an Accelerator built by another test (e.g. a
    plain CPU one) would otherwise decide this test's DeepSpeed set-up, and vice versa."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


@pytest.fixture
def one_process(_process_group, monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(REPO / "tests/recipes"))  # toy_rewards
    _reset_accelerate()
    yield tmp_path
    _reset_accelerate()


def _config(run_dir: Path, *overrides: str):
    return load_config(REPO / "recipes/configs/grpo_math_cpu.yaml", [
        f"model.name_or_path={tiny_model_dir()}", f"run.output_dir={run_dir}", "rollout.engine=hf",
        "rollout.prompts_per_step=2", "rollout.group_size=4", "rollout.max_new_tokens=8", "eval.enabled=false",
        "logging.progress=false", "logging.tensorboard=false", "logging.sample_every=2",
        "trainer.learning_rate=1e-3", "trainer.verify_sync=true", *overrides,
    ])


def test_train_step_returns_a_typed_result(one_process):
    recipe = _recipe()
    cfg = _config(one_process, 'rewards=[{name: "toy_rewards:char_parity"}]', "diagnostics.post_update_every=2")
    c = recipe.setup(cfg)
    try:
        assert isinstance(c, recipe.Components)
        assert c.ref_model is None  # the default loss declares no KL term: no reference model is loaded
        first = recipe.train_step(cfg, c, 1)
        second = recipe.train_step(cfg, c, 2)
    finally:
        c.engine.close()
    assert isinstance(first, recipe.StepResult)
    m = {k: float(v) for k, v in first.metrics.items()}
    for key in ("reward/mean", "rollout/accuracy", "rollout/completion_len_mean", "rollout/truncated_frac",
                "policy/entropy", "policy/pg_loss", "train/loss", "train/grad_norm", "train/lr",
                "diag/zero_adv_frac", "time/generate", "time/score", "time/advantage", "time/train",
                "time/sync", "time/step"):
        assert key in m, key
    assert "policy/kl_ref" not in m
    for dup in ("diag/completion_len_mean", "diag/truncated_frac", "diag/entropy_mean"):
        assert dup not in m  # one key per quantity
    assert m["rollout/distinct_prompts"] == 2 and m["train/grad_norm"] > 0
    assert m["train/lr"] == pytest.approx(1e-3)
    assert first.nonfinite_skips == 0 and m["train/nonfinite_skips"] == 0
    assert first.sync_max_abs_diff == 0.0  # the engine serves exactly the trainer's weights
    # post_update_every=2: the post-update forward (and its displacement metrics) at step 2 only
    assert "diag/logp_delta_pos" not in m and "diag/logp_delta_neg" in second.metrics
    assert first.samples == [] and len(second.samples) == 2  # sample_every=2: one row per prompt
    assert {type(s).__name__ for s in second.samples} == {"Sample"}
    assert all(s.reward in (0.0, 1.0) and s.prompt.startswith("What is") for s in second.samples)


def test_a_kl_term_loads_the_reference_model_and_a_saturated_step_logs_zero_grad_norm(one_process):
    recipe = _recipe()
    cfg = _config(one_process, 'rewards=[{name: "toy_rewards:constant"}]', "loss.params.kl_coef=0.1")
    c = recipe.setup(cfg)
    try:
        assert c.ref_model is not None and c.loss_fn.needs_ref_model
        result = recipe.train_step(cfg, c, 1)
    finally:
        c.engine.close()
    m = {k: float(v) for k, v in result.metrics.items()}
    assert m["diag/zero_adv_frac"] == 1.0  # every group all-correct: every advantage is 0
    assert m["policy/kl_ref"] == 0.0  # before the first update the policy is the reference
    # no gradient at all (zero advantages, KL at its minimum): a real 0, not NaN
    assert m["train/grad_norm"] == 0.0


@pytest.mark.parametrize("overrides", [
    pytest.param(("advantage={name: riskpo, params: {bundle_size: 2}}",), id="riskpo"),
    pytest.param(("advantage={name: copo, answer_extractor: last_number}",), id="copo"),
    pytest.param(("data.sampler={name: vade}", "data.num_train=16"), id="vade"),
])
def test_two_steps_per_method(one_process, overrides):
    """Each outcome method trains two real steps in the recipe: the estimator gets what it
    declares (COPO its answer clusters), the VADE sampler learns from every sampled group."""
    recipe = _recipe()
    cfg = _config(one_process, 'rewards=[{name: "toy_rewards:char_parity"}]', *overrides)
    c = recipe.setup(cfg)
    try:
        results = [recipe.train_step(cfg, c, step) for step in (1, 2)]
    finally:
        c.engine.close()
    for res in results:
        m = {k: float(v) for k, v in res.metrics.items()}
        assert res.nonfinite_skips == 0 and m["train/grad_norm"] >= 0 and m["rollout/distinct_prompts"] == 2
    if cfg.data.sampler.name == "vade":
        state = c.sampler.state_dict()
        seen = sum(a + b for a, b in zip(state["alpha"], state["beta"], strict=True)) - 2 * 16  # minus the priors
        assert seen == pytest.approx(2 * 2 * 4, rel=0.2)  # 2 steps x 2 prompts x 4 rows observed, lightly decayed


def test_async_with_max_staleness_zero_is_the_sync_run(one_process):
    """rollout.async with max_staleness 0 prefetches nothing: two steps give the sync run's
    numbers exactly (rewards, loss, gradient norm; the wall-clock times aside)."""
    recipe = _recipe()

    def two_steps(*overrides: str) -> tuple[list[dict], object]:
        cfg = _config(one_process / "async" if overrides else one_process / "sync",
                      'rewards=[{name: "toy_rewards:char_parity"}]', *overrides)
        _reset_accelerate()  # one Accelerator per run, as in two processes
        c = recipe.setup(cfg)
        try:
            out = [{k: float(v) for k, v in recipe.train_step(cfg, c, step).metrics.items()
                    if not k.startswith("time/") and k != "rollout/tokens_per_s"} for step in (1, 2)]
        finally:
            c.engine.close()
        return out, c.prefetcher

    sync, _ = two_steps()
    zero, prefetcher = two_steps("rollout.async=true", "rollout.max_staleness=0")
    assert prefetcher is None
    assert sync[1]["train/grad_norm"] > 0
    assert zero == sync


def test_resume_refuses_a_sampler_state_made_for_another_dataset(one_process):
    """A checkpoint whose VADE state covers 16 problems cannot drive a run over 32: the resume
    stops with a config error naming the checkpoint, instead of sampling from a wrong posterior."""
    from rlkit.config import ConfigError
    from rlkit.trainer.checkpoint import save_checkpoint

    recipe = _recipe()
    vade = ('rewards=[{name: "toy_rewards:char_parity"}]', "data.sampler={name: vade}")
    cfg = _config(one_process, *vade, "data.num_train=16")
    c = recipe.setup(cfg)
    try:
        recipe.train_step(cfg, c, 1)
        save_checkpoint(c.accelerator, c.run_dir, 1, {"sampler": c.sampler.state_dict(),
                                                      "alarms": c.monitor.state_dict()}, keep_last=1)
    finally:
        c.engine.close()
    _reset_accelerate()
    cfg = _config(one_process, *vade, "data.num_train=32")
    c = recipe.setup(cfg)
    try:
        with pytest.raises(ConfigError, match="cannot resume from .*step-000001.*data config changed"):
            recipe.restore(cfg, c)
    finally:
        c.engine.close()


def _record_loss_inputs(monkeypatch) -> list:
    """Wrap the trainer's per-micro-batch forward; return the list its LossInputs land in."""
    import rlkit.trainer.update as update

    seen, forward = [], update._forward

    def recording(*args, **kwargs):
        out, inputs = forward(*args, **kwargs)
        seen.append(inputs)
        return out, inputs

    monkeypatch.setattr(update, "_forward", recording)
    return seen


@pytest.mark.parametrize(("overrides", "keys", "field"), [
    pytest.param(("token_weights={name: thr, params: {p: 0.5}}",), ("thr/pos_frac", "thr/weight_mean"),
                 "token_weights", id="thr"),
    pytest.param(("loss={name: hapo}", "advantage={name: hapo_tlga}"),
                 ("hapo/clip_high_mean", "hapo/clip_low_mean", "hapo/redistributed_frac"), "entropy_score",
                 id="hapo"),
])
def test_token_level_methods_fill_their_loss_inputs_from_one_token_pass(one_process, monkeypatch, overrides, keys,
                                                                       field):
    """THR's weights and HAPO's batch entropy scores come from the old-policy token pass, once
    per step, and reach every micro-batch's LossInputs; its cost is logged as time/token_pass."""
    import rlkit.trainer.token_pass as tp_module

    calls, real = [], tp_module.token_pass
    monkeypatch.setattr(tp_module, "token_pass", lambda *a, **k: calls.append(1) or real(*a, **k))
    seen = _record_loss_inputs(monkeypatch)
    recipe = _recipe()
    cfg = _config(one_process, 'rewards=[{name: "toy_rewards:char_parity"}]', "trainer.micro_batch_tokens=64",
                  *overrides)
    c = recipe.setup(cfg)
    try:
        results = [recipe.train_step(cfg, c, step) for step in (1, 2)]
    finally:
        c.engine.close()
    assert len(calls) == 2  # one pass per step, not one per micro-batch
    assert len(seen) > 2  # several micro-batches per step (the budget is 64 tokens)
    for inputs in seen:
        value = getattr(inputs, field)
        assert value is not None and value.shape == inputs.mask.shape
        assert bool((value[~inputs.mask] == 0).all())  # 0 on padding
    if field == "token_weights":  # 1 +- p on THR-signed tokens, 1 where no influence is defined
        values = torch.cat([i.token_weights[i.mask] for i in seen])
        assert set(values.unique().tolist()) <= {0.5, 1.0, 1.5}
    else:  # the normalised entropy score spans [-1, 1] over the batch
        values = torch.cat([i.entropy_score[i.mask] for i in seen])
        assert float(values.min()) >= -1.0 and float(values.max()) <= 1.0
    for res in results:
        m = {k: float(v) for k, v in res.metrics.items()}
        assert res.nonfinite_skips == 0 and m["time/token_pass"] > 0
        for key in keys:
            assert key in m, key


def test_no_token_pass_when_nothing_needs_it(one_process, monkeypatch):
    """The default config (one on-policy update, engine logprobs, no token weights) runs no
    token pass, hands the loss no token weights or entropy scores, and logs no time for it."""
    import rlkit.trainer.token_pass as tp_module

    def fail(*a, **k):
        raise AssertionError("token pass ran although nothing needs it")

    monkeypatch.setattr(tp_module, "token_pass", fail)
    seen = _record_loss_inputs(monkeypatch)
    recipe = _recipe()
    cfg = _config(one_process, 'rewards=[{name: "toy_rewards:char_parity"}]')
    c = recipe.setup(cfg)
    try:
        result = recipe.train_step(cfg, c, 1)
    finally:
        c.engine.close()
    assert seen and all(i.token_weights is None and i.entropy_score is None for i in seen)
    assert "time/token_pass" not in result.metrics and not any(k.startswith("thr/") for k in result.metrics)


def _perturbed_copy(src: Path, dst: Path, scale: float) -> Path:
    """The tiny model with noise added to every weight, saved with the same tokenizer."""
    import shutil

    from transformers import AutoModelForCausalLM

    shutil.copytree(src, dst)
    model = AutoModelForCausalLM.from_pretrained(dst)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    model.save_pretrained(dst)
    return dst


@pytest.mark.parametrize("perturb", [0.0, 0.5], ids=["self", "perturbed"])
def test_kdrl_teacher_kl_is_zero_for_the_model_itself_and_positive_for_another(one_process, perturb):
    """KDRL with the tiny model as its own teacher: kd/kl is 0 (same weights, fp32); a perturbed
    copy as teacher: kd/kl > 0. The teacher is loaded once, frozen; its logprobs are scored
    once per step (time/teacher); the coefficient follows its linear schedule."""
    teacher = tiny_model_dir() if perturb == 0 else _perturbed_copy(tiny_model_dir(), one_process / "t", perturb)
    recipe = _recipe()
    cfg = _config(one_process, 'rewards=[{name: "toy_rewards:char_parity"}]', "model.dtype=float32",
                  f"model.teacher_model={teacher}", "trainer.max_steps=2",
                  "regularizers=[{name: kdrl, coef: 0.5, coef_end: 0.1, schedule: linear}]")
    c = recipe.setup(cfg)
    try:
        assert c.teacher is not None and not any(p.requires_grad for p in c.teacher.parameters())
        results = [recipe.train_step(cfg, c, step) for step in (1, 2)]
    finally:
        c.engine.close()
    m1, m2 = ({k: float(v) for k, v in r.metrics.items()} for r in results)
    assert m1["reg/kdrl/coef"] == pytest.approx(0.5) and m2["reg/kdrl/coef"] == pytest.approx(0.1)
    assert m1["kd/active_frac"] == 1.0 and m1["time/teacher"] > 0
    if perturb == 0:
        assert abs(m1["kd/kl"]) < 1e-5  # the student's first step: teacher == student
    else:
        assert m1["kd/kl"] > 1e-3 and m2["kd/kl"] > 1e-3


def test_a_teacher_with_another_vocabulary_is_refused(one_process):
    from transformers import AutoModelForCausalLM

    from rlkit.config import ConfigError

    other = one_process / "other"
    import shutil

    shutil.copytree(tiny_model_dir(), other)
    model = AutoModelForCausalLM.from_pretrained(other)
    model.resize_token_embeddings(model.get_input_embeddings().weight.shape[0] + 8)
    model.save_pretrained(other)
    recipe = _recipe()
    cfg = _config(one_process, f"model.teacher_model={other}", "regularizers=[{name: kdrl, coef: 0.01}]")
    with pytest.raises(ConfigError, match=r"teacher's vocabulary \(\d+ output rows.*differs from the policy's \(\d+"):
        recipe.setup(cfg)


@pytest.mark.parametrize(("overrides", "check"), [
    pytest.param(('rewards=[{name: "toy_rewards:zero"}]', "mixing={name: hpt, params: {gamma: 0}}"), "hpt_all",
                 id="hpt-all-switched"),
    pytest.param(('rewards=[{name: "toy_rewards:zero"}]', "mixing={name: relift, params: {buffer_size: 2}}"),
                 "relift", id="relift"),
    pytest.param(('rewards=[{name: "toy_rewards:char_parity"}]', f"model.teacher_model={tiny_model_dir()}",
                  "regularizers=[{name: kdrl, coef: 0.01}]",
                  "mixing={name: paced, params: {switch_step: 2}}"), "paced", id="paced"),
])
def test_mixing_modes_train_two_steps(one_process, overrides, check):
    """HPT with every group wrong: every prompt switches to its demonstration (no policy
    gradient, only SFT rows); ReLIFT: two hard prompts fill a buffer of 2 and trigger one SFT
    step; PACED: the forward stage (demonstrations) at step 1, the reverse stage (teacher) at 2."""
    recipe = _recipe()
    cfg = _config(one_process, "data.demo_field=demo", *overrides)
    c = recipe.setup(cfg)
    try:
        results = [recipe.train_step(cfg, c, step) for step in (1, 2)]
    finally:
        c.engine.close()
    m1, m2 = ({k: float(v) for k, v in r.metrics.items()} for r in results)
    for m in (m1, m2):
        assert m["train/nonfinite_skips"] == 0
    if check == "hpt_all":
        assert m1["hpt/switched_frac"] == 1.0 and m1["sft/rows"] == 2 and m1["sft/loss"] > 0
        assert m1["policy/pg_loss"] == 0.0 and m1["train/grad_norm"] > 0  # only the demonstrations move it
    elif check == "relift":
        assert m1["relift/sft_step"] == 1.0 and m1["sft/rows"] == 2 and m1["relift/buffer"] == 0
        assert m1["train/lr"] == pytest.approx(1e-3)  # the RL schedule is where it was
    else:
        assert m1["paced/reverse"] == 0.0 and "sft/rows" in m1 and "kd/kl" in m1
        assert m2["paced/reverse"] == 1.0 and "sft/rows" not in m2


def test_resume_refuses_a_relift_buffer_made_for_another_dataset(one_process):
    """A checkpoint whose ReLIFT buffer names problems of another data set (other operands)
    cannot be resumed: the buffered indices would point at other problems."""
    from rlkit.config import ConfigError
    from rlkit.trainer.checkpoint import save_checkpoint

    recipe = _recipe()
    relift = ('rewards=[{name: "toy_rewards:zero"}]', "mixing={name: relift, params: {buffer_size: 8}}",
              "data.demo_field=demo")
    cfg = _config(one_process, *relift)
    c = recipe.setup(cfg)
    try:
        recipe.train_step(cfg, c, 1)  # two hard prompts buffered, none popped
        assert len(c.mixer.buffer) == 2
        save_checkpoint(c.accelerator, c.run_dir, 1, {"sampler": c.sampler.state_dict(),
                                                      "alarms": c.monitor.state_dict(),
                                                      "mixer": c.mixer.state_dict()}, keep_last=1)
    finally:
        c.engine.close()
    _reset_accelerate()
    cfg = _config(one_process, *relift, "data.max_operand=8")  # other problems; same count and seed
    c = recipe.setup(cfg)
    try:
        with pytest.raises(ConfigError, match="cannot resume from .*ReLIFT buffer refers to problem .*data config"):
            recipe.restore(cfg, c)
    finally:
        c.engine.close()


def test_a_demonstration_column_the_data_lacks_is_refused_with_the_columns(one_process):
    from rlkit.config import ConfigError

    recipe = _recipe()
    cfg = _config(one_process, "data.demo_field=solution", "mixing={name: hpt}")
    with pytest.raises(ConfigError, match="data.demo_field: no problem has a 'solution' column; the columns are a, b, demo"):
        recipe.setup(cfg)
