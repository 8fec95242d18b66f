"""GRPO (and its family) on math problems: vLLM rollouts, DeepSpeed updates, weight sync.

Launch:
    accelerate launch --config_file launch/accelerate/zero2_single.yaml \\
        recipes/grpo_math.py --config recipes/configs/grpo_math_cpu.yaml [a.b=c ...]

One step:
    sample B prompts -> G completions each (vLLM) -> rewards -> advantages
    -> num_iterations x mini_batches of forward/loss/backward/step (DeepSpeed)
    -> push the new weights into vLLM -> metrics, diagnostics, checkpoint.
With rollout.async the next step's rollouts are generated while this step trains
(rlkit/trainer/prefetch.py).
The algorithm is whatever the config names: advantage estimator, loss class, coefficients.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine, see docs/environment.md
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")  # vLLM logs through the root logger: rlkit/console.py routes it

from rlkit.config import ConfigError, RecipeConfig, dump_config, load_config  # noqa: E402
from rlkit.trainer.state import Components, RunState, Sample, StepResult  # noqa: E402

log = logging.getLogger("grpo_math")


class RunStopped(RuntimeError):
    """The run stopped early on purpose (the message says why) after writing a checkpoint."""


class ServerLost(RuntimeError):
    """A rollout server failed mid-step (rollout.engine: server, out of retries). `complete`
    is the last step whose state is whole (the policy, the alarms, and `sampler_state`, the
    sampler as it was before the failed step drew), so a checkpoint of it loses nothing."""

    def __init__(self, error: Exception, complete: int, sampler_state: dict) -> None:
        super().__init__(str(error))
        self.error, self.complete, self.sampler_state = error, complete, sampler_state


# ----------------------------------------------------------------------------- setup


def setup(cfg: RecipeConfig) -> Components:
    """Every part of the run, in dependency order: the accelerator first (it decides the
    process layout), then the data (it needs only the tokenizer, so a data or prompt-length
    error costs no model load), then the policy (DeepSpeed needs the accelerator), then what
    the loss declares it needs, then the engine (it reads the same model directory)."""
    import torch
    from transformers import AutoTokenizer

    import rewards as reward_registry
    from rlkit.algorithms.losses import build_loss
    from rlkit.algorithms.mixing import build_mixer, check_demo_field
    from rlkit.algorithms.regularizers import build_regularizer
    from rlkit.algorithms.token_weights import build_token_weighter
    from rlkit.assets import resolve_model
    from rlkit.data import build_sampler
    from rlkit.data.datasets import fit_prompt_lengths, load_problems
    from rlkit.diagnostics.alarms import AlarmMonitor
    from rlkit.platform import resolve_dtype
    from rlkit.rollout.engine import build_engine
    from rlkit.rollout.types import SamplingConfig
    from rlkit.trainer.canary import SyncCanary
    from rlkit.trainer.collect import RewardFunction
    from rlkit.trainer.deepspeed import (
        build_accelerator,
        build_policy,
        load_causal_lm,
        load_teacher,
    )
    from rlkit.trainer.prefetch import RolloutPrefetcher
    from rlkit.trainer.update import ForwardSettings, ScaledRegularizer

    torch.manual_seed(cfg.trainer.seed)
    accelerator = build_accelerator(cfg.trainer, cfg.model, list(cfg.logging.trackers), cfg.run.output_dir)
    if cfg.rollout.prompts_per_step % accelerator.num_processes:
        raise ConfigError(f"rollout.prompts_per_step: {cfg.rollout.prompts_per_step} prompts cannot be split "
                          f"evenly over {accelerator.num_processes} processes; use a multiple of "
                          f"{accelerator.num_processes}")
    model_path = resolve_model(cfg.model.name_or_path)

    r = cfg.rollout
    tokenizer = AutoTokenizer.from_pretrained(model_path)  # the engine's, without its weights
    if r.chat_template and getattr(tokenizer, "chat_template", None) is None:
        raise ConfigError(f"rollout.chat_template is true but the tokenizer of {cfg.model.name_or_path} has no chat "
                          "template; set rollout.chat_template: false to feed prompts as raw text")
    train_problems, eval_problems = load_problems(cfg.data)  # a DataError is a ConfigError: exit 2, its message
    # Prompts over data.max_prompt_tokens, or leaving the engine no room for the completion
    # (they would fail inside it mid-run), are dropped now and counted; all training ones
    # dropped is an error with the lengths seen.
    room, max_prompt = r.max_model_len - r.max_new_tokens, cfg.data.max_prompt_tokens
    train_problems = fit_prompt_lengths(train_problems, tokenizer, chat_template=r.chat_template,
                                        max_prompt_tokens=max_prompt, room=room, what="training", required=True)
    eval_problems = fit_prompt_lengths(eval_problems, tokenizer, chat_template=r.chat_template,
                                       max_prompt_tokens=max_prompt, room=room, what="evaluation", required=False)
    if cfg.data.demo_field is not None:
        try:
            check_demo_field(train_problems, cfg.data.demo_field)
        except ValueError as exc:  # a column the data does not have: say which ones it has
            raise ConfigError(str(exc)) from None

    policy = build_policy(accelerator, model_path, cfg.model, cfg.trainer)

    loss_fn = build_loss(cfg.loss.target, **cfg.loss.params)
    regularizers = tuple(ScaledRegularizer(spec.coef, build_regularizer(spec.name, **spec.params))
                         for spec in cfg.regularizers)
    ref_model = None
    if loss_fn.needs_ref_model:  # declared by the loss; a run without a KL term never loads it
        ref_model = load_causal_lm(resolve_model(cfg.model.ref_model or cfg.model.name_or_path), trainable=False)
        ref_model.to(accelerator.device)  # the policy's device (DeepSpeed moved the policy there)

    teacher = None
    if cfg.model.teacher_model is not None:  # only set when a distillation term uses it (config check)
        teacher = load_teacher(resolve_model(cfg.model.teacher_model), policy.unwrapped(), model_path)
        teacher.to(accelerator.device)

    server = {}
    if r.engine == "server":  # running vLLM servers (docs/rollout.md, "Rollouts on vLLM servers")
        # With several trainer ranks rank 0 pushes the weights; the others wait at a barrier.
        server = dict(servers=list(r.servers), timeout_s=r.server_timeout_s, retries=r.server_retries,
                      weight_dir=r.weight_dir or str(Path(cfg.run.output_dir) / "server_weights"),
                      served_model_name=cfg.model.name_or_path, sync_leader=accelerator.is_main_process,
                      weight_transfer=r.weight_transfer)
    engine = build_engine(
        r.engine, model_path, dtype=resolve_dtype(r.dtype), seed=cfg.trainer.seed, chat_template=r.chat_template,
        max_model_len=r.max_model_len, gpu_memory_utilization=r.gpu_memory_utilization,
        cpu_kvcache_gib=r.cpu_kvcache_gib, enforce_eager=r.enforce_eager,
        distributed_executor_backend="external_launcher" if accelerator.num_processes > 1 else None, **server,
    )
    if server:
        accelerator.wait_for_everyone()  # the leader's health check may reset a server: nobody samples before
    d = cfg.diagnostics
    return Components(
        run_dir=Path(cfg.run.output_dir), accelerator=accelerator, policy=policy, loss_fn=loss_fn,
        regularizers=regularizers, ref_model=ref_model, engine=engine,
        token_weighter=(build_token_weighter(cfg.token_weights.name, **cfg.token_weights.params)
                        if cfg.token_weights is not None else None),
        teacher=teacher,
        canary=(SyncCanary.from_problems(engine.tokenizer, eval_problems or train_problems,
                                         chat_template=r.chat_template,
                                         dtypes=[resolve_dtype(r.dtype), resolve_dtype(cfg.model.dtype)])
                if cfg.trainer.sync_canary else None),
        mixer=build_mixer(cfg.mixing.name, **cfg.mixing.params) if cfg.mixing is not None else None,
        train_problems=train_problems, eval_problems=eval_problems,
        sampler=build_sampler(cfg.data.sampler.name, cfg.data.sampler.params, num_items=len(train_problems),
                              seed=cfg.data.seed),
        reward_fns=tuple(RewardFunction(s.name, reward_registry.get_reward(s.name), s.weight, dict(s.params),
                                        timeout_s=r.reward_timeout_s, conversational=s.conversational)
                         for s in cfg.rewards),
        monitor=AlarmMonitor(entropy_collapse_frac=d.entropy_collapse_frac, zero_adv_frac=d.zero_adv_frac,
                             grad_z_threshold=d.grad_z_threshold, window=d.window, warmup=d.warmup,
                             reward_rise_tol=d.reward_rise_tol, converged_frac=d.converged_frac),
        forward=ForwardSettings(temperature=max(r.temperature, 1e-5), chunk_size=cfg.trainer.logprob_chunk_size,
                                pad_id=engine.pad_id, shared_prefix=cfg.trainer.shared_prefix,
                                micro_batch_tokens=cfg.trainer.micro_batch_tokens, gen_budget=r.max_new_tokens),
        sampling=SamplingConfig(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                                max_new_tokens=r.max_new_tokens, stop=list(r.stop)),
        prefetcher=RolloutPrefetcher() if r.prefetch else None,
    )


def run_identity(cfg: RecipeConfig, world_size: int) -> dict:
    """What a checkpoint must agree with to be resumed by this run (written into each one)."""
    return {"model": cfg.model.name_or_path, "group_size": cfg.rollout.group_size, "world_size": world_size}


def restore(cfg: RecipeConfig, c: Components) -> int:
    """Resume from the newest readable checkpoint in the run directory, if any; returns the
    start step. A checkpoint that cannot be read (torn by a crash outside rlkit's atomic
    write, a corrupted file) is moved aside and the one before it is used; one made by a run
    with another model, group size or number of processes is refused."""
    from rlkit.trainer.checkpoint import list_checkpoints, load_checkpoint, set_aside
    from rlkit.trainer.update import sync_weights

    candidates = list_checkpoints(c.run_dir)[::-1] if cfg.run.resume else []
    for ckpt in candidates:
        try:
            state = load_checkpoint(c.accelerator, ckpt)
            break
        except Exception as exc:  # noqa: BLE001 - any unreadable file: fall back, and say so
            moved = set_aside(c.accelerator, ckpt)
            log.error("checkpoint %s cannot be read (%s: %s); moved to %s, trying the one before",
                      ckpt.name, type(exc).__name__, str(exc)[:200], moved.name)
    else:
        if candidates:
            log.error("no checkpoint in %s could be read; starting from step 0", c.run_dir)
        return 0

    def refuse(why: str) -> ConfigError:
        return ConfigError(f"cannot resume from {ckpt}: {why}. Use another run.output_dir, or "
                           "run.resume: false to start over in this one")

    was = state.get("run", {})
    now = run_identity(cfg, c.accelerator.num_processes)
    for key, field in (("model", "model.name_or_path"), ("group_size", "rollout.group_size"),
                       ("world_size", "the number of processes")):
        if key in was and was[key] != now[key]:
            raise refuse(f"it was written by a run with {field} = {was[key]}, this run has {now[key]}")
    try:
        c.sampler.load_state_dict(state["sampler"])
    except ValueError as exc:  # e.g. a checkpoint made for another data set: stop, say which
        raise refuse(str(exc)) from None
    c.monitor.load_state_dict(state["alarms"])
    if c.mixer is not None:
        try:
            c.mixer.load_state_dict(state.get("mixer", {}), [p.prompt for p in c.train_problems])
        except ValueError as exc:
            raise refuse(str(exc)) from None
    sync_weights(c.engine, c.policy)  # the engine starts from the base model: bring it up to date
    if cfg.rollout.engine == "server":
        c.accelerator.wait_for_everyone()  # the leader's push is on the servers before anyone samples
    return int(state["step"])


def sampler_state(c: Components) -> dict:
    """The sampler's state for a checkpoint: with a prefetch pending, as it was before the
    prefetch drew (a resumed run draws those prompts again)."""
    pending = c.prefetcher.pending if c.prefetcher is not None else None
    return pending.sampler_state if pending is not None else c.sampler.state_dict()


# ----------------------------------------------------------------------------- one step


def train_step(cfg: RecipeConfig, c: Components, step: int) -> StepResult:
    """Rollouts -> rewards -> advantages -> update -> weight sync -> metrics, for one step."""

    from rlkit.algorithms.distill import scheduled_coef
    from rlkit.algorithms.mixing import ReLIFT
    from rlkit.algorithms.token_weights import TokenFeatures, TokenWeightInputs
    from rlkit.diagnostics.metrics import DiagInputs, step_metrics
    from rlkit.rollout.server_engine import ServerError
    from rlkit.rollout.weight_sync import trainer_weights_for_engine
    from rlkit.trainer.collect import (
        collect_rollouts,
        compute_advantages,
        nonfinite_rows,
        rollout_metrics,
        seed_rollout,
    )
    from rlkit.trainer.distributed import (
        all_across_ranks,
        assert_same_across_ranks,
        distinct_across_ranks,
        gather_across_ranks,
        mean_across_ranks,
        rank_shard,
        sum_across_ranks,
    )
    from rlkit.trainer.guard import kill_point, set_step, test_hook
    from rlkit.trainer.prefetch import overlap_seconds
    from rlkit.trainer.sft import kd_row_weights, mix_step, relift_step
    from rlkit.trainer.token_pass import token_pass
    from rlkit.trainer.update import (
        ScaledRegularizer,
        batch_logprobs,
        policy_update,
        post_update_logprobs,
        sync_weights,
    )

    r, t, acc = cfg.rollout, cfg.trainer, c.accelerator
    t_step = time.perf_counter()
    set_step(step)

    # 1. Rollouts, scored. Every rank draws the same indices (one sampler state) and keeps its
    #    share; the samples are a function of (seed, step, rank), so a resumed run repeats them.
    #    With rollout.async the first round was drawn and generated during the last step.
    seed_rollout(t.seed, step, acc.process_index)
    prefetched = c.prefetcher.take(step) if c.prefetcher is not None else None
    sampler_before = prefetched.sampler_state if prefetched is not None else c.sampler.state_dict()
    blocked = [0.0]  # seconds this step waited for its prefetched batch

    def prefetched_batch():
        t0 = time.perf_counter()
        try:
            return prefetched.result()
        finally:
            blocked[0] = time.perf_counter() - t0

    def draw(at: int) -> list[int]:
        return rank_shard(c.sampler.next_indices(r.prompts_per_step, at), acc.process_index, acc.num_processes)

    try:
        got = collect_rollouts(
            lambda: draw(step), c.train_problems,
            lambda problems: c.engine.generate([p.prompt for p in problems], r.group_size, c.sampling),
            c.reward_fns, dynamic=r.dynamic_sampling, max_rounds=r.max_sampling_rounds, pad_id=c.engine.pad_id,
            all_ranks=lambda done: all_across_ranks(acc, done),
            first=None if prefetched is None else (prefetched.indices, prefetched_batch),
        )
    except ServerError as exc:  # out of retries: the run stops with step - 1's state (nothing trained yet)
        raise ServerLost(exc, step - 1, sampler_before) from exc
    batch, scored = got.batch, got.scored
    batch.rewards = scored.rewards
    kill_point("generate")
    # A stateful sampler (VADE) learns each problem's pass rate from every group sampled, on
    # all ranks, so every rank keeps the same state (the uniform sampler ignores this).
    outcomes = gather_across_ranks(acc, got.observed)
    c.sampler.update([o[0] for o in outcomes], [o[1] for o in outcomes], [o[2] for o in outcomes], step)
    assert_same_across_ranks(acc, c.sampler.state_dict, "the prompt sampler's state")
    #    rollout.async: draw the next step's prompts now (the order a sync run draws them in)
    #    and have the servers generate them while this step trains.
    if c.prefetcher is not None and step < t.max_steps:
        before = c.sampler.state_dict()
        nxt = draw(step + 1)
        rendered = c.engine.render([c.train_problems[i].prompt for i in nxt])  # tokenizer: this thread only
        c.prefetcher.start(step + 1, nxt, before,
                           lambda: c.engine.generate_rendered(*rendered, r.group_size, c.sampling))
    # Weight versions (engines that count them): how many syncs this batch lags the policy.
    staleness = None if batch.weight_version is None else c.engine.weight_version - batch.weight_version

    # 2. Advantages (answer clusters only for the estimators that declare they need them).
    t_adv = time.perf_counter()
    advantages = compute_advantages(cfg.advantage.name, cfg.advantage.params, batch, scored.rewards,
                                    answer_extractor=cfg.advantage.answer_extractor)

    # A non-finite reward or advantage poisons the whole update: the step trains on nothing
    # (every rank agrees), its rows are logged, and the loop counts it toward the streak stop.
    poisoned = nonfinite_rows(scored.rewards, advantages)
    if not all_across_ranks(acc, not poisoned):
        log.warning("step %d: non-finite rewards or advantages in rows %s (rewards %s); the step is skipped: "
                    "no update, no weight sync", step, poisoned[:16], [float(scored.rewards[i]) for i in poisoned[:16]])
        metrics = {**rollout_metrics(batch, scored), **got.metrics, "train/nonfinite_skips": 1.0,
                   "time/step": time.perf_counter() - t_step}
        return StepResult(metrics=mean_across_ranks(acc, metrics, weight=len(got.drawn)), nonfinite_skips=1)

    # 3. Mixing (hpt / relift / paced): which groups the update keeps, which demonstrations
    #    join its optimizer steps, how each group's distillation term is weighted.
    full_batch, full_scored, mixed = batch, scored, None
    if c.mixer is not None:
        mixed = mix_step(c.mixer, step, batch, scored, advantages, got.problems, demo_field=cfg.data.demo_field,
                         tokenizer=c.engine.tokenizer, max_tokens=cfg.sft.max_tokens, pad_id=c.engine.pad_id)
        batch, scored, advantages = mixed.batch, mixed.scored, mixed.advantages

    # 4. The old-policy token pass, only when something needs it: the trainer's own old
    #    logprobs when the batch is reused (several mini-batches or iterations; otherwise the
    #    engine's serve, or the first forward's), whole-batch entropy statistics (a loss that
    #    declares needs_entropy_score, HAPO), or a token-weight function (THR).
    t_pass = time.perf_counter()
    old = batch.engine_logprobs if t.use_engine_logprobs else None
    recompute_old = old is None and (t.num_iterations > 1 or t.mini_batches > 1)
    features, pass_metrics = None, {}
    if recompute_old or c.loss_fn.needs_entropy_score or c.token_weighter is not None:
        tp = token_pass(c.policy.unwrapped(), batch, c.forward, c.policy.autocast, weighter=c.token_weighter,
                        correct=scored.correct)
        old = tp.logprobs if recompute_old else old
        features = TokenFeatures()
        if c.token_weighter is not None:
            features = c.token_weighter(TokenWeightInputs(
                mask=batch.completion_mask, advantages=advantages, rewards=scored.rewards, correct=scored.correct,
                group_ids=batch.group_ids, entropy=tp.entropy, scores=tp.scores))
        if c.loss_fn.needs_entropy_score:
            features.entropy_score = c.loss_fn.batch_entropy_score(tp.entropy, batch.completion_mask)
        pass_metrics = {**features.metrics, "time/token_pass": tp.seconds}
    #    The teacher's logprobs of the sampled tokens, once per batch, and each row's weight in
    #    the distillation term (the term's own row mask x PACED's per-group weight).
    if c.teacher is not None:
        t_teacher = time.perf_counter()
        features = features or TokenFeatures()
        features.teacher_logprobs, _ = batch_logprobs(c.teacher, batch, c.forward, c.policy.autocast)
        features.kd_weights = kd_row_weights(c.regularizers, scored.correct, batch,
                                             None if mixed is None else mixed.kd_group_weights)
        pass_metrics["time/teacher"] = time.perf_counter() - t_teacher

    # 5. The update (regularizer coefficients at this step's point of their schedule), then
    #    ReLIFT's separate SFT step when its buffer is full.
    t_train = time.perf_counter()
    regularizers = tuple(ScaledRegularizer(scheduled_coef(s.coef, s.coef_end, s.schedule, step, t.max_steps), r.term)
                         for s, r in zip(cfg.regularizers, c.regularizers, strict=True))
    update = policy_update(c.policy, c.loss_fn, batch, advantages, old_logprobs=old, ref_model=c.ref_model,
                           fs=c.forward, num_iterations=t.num_iterations, mini_batches=t.mini_batches,
                           regularizers=regularizers, features=features,
                           sft=None if mixed is None else mixed.sft, sft_coef=1.0 if mixed is None else mixed.sft_coef)
    mix_metrics = {} if mixed is None else dict(mixed.metrics)
    if isinstance(c.mixer, ReLIFT):
        mix_metrics.update(relift_step(
            c.mixer, step, c.policy, c.forward, indices=got.indices, mixed=mixed, problems=c.train_problems,
            demo_field=cfg.data.demo_field, tokenizer=c.engine.tokenizer, chat_template=r.chat_template,
            max_tokens=cfg.sft.max_tokens, pad_id=c.engine.pad_id))
    for spec, reg in zip(cfg.regularizers, regularizers, strict=True):
        if spec.schedule != "constant":
            mix_metrics[f"reg/{spec.name}/coef"] = reg.coef

    # 6. Weight sync, optionally read back (0.0 = the engine serves exactly the trainer's weights).
    #    Servers never reload mid-batch: the prefetched generation ends first, and with several
    #    trainer ranks every rank waits until the leader's push is done.
    t_sync = time.perf_counter()
    prefetch_wait = c.prefetcher.wait() if c.prefetcher is not None else 0.0
    barrier = acc.num_processes > 1 and r.engine == "server"
    canary = {}
    drift = None
    lost = None
    pushed = None  # seconds of the push itself (the engine's reload included)
    try:
        if barrier:
            acc.wait_for_everyone()
        if update.applied_steps or isinstance(c.mixer, ReLIFT):  # nothing to push after a discarded update
            if not test_hook("skip_sync", step):  # test-only: the canary's test makes a sync silently not happen
                pushed = sync_weights(c.engine, c.policy)
        if barrier:
            acc.wait_for_everyone()
        if c.canary is not None:  # does the engine now serve what the trainer holds?
            check = c.canary.check(c.engine, c.policy.unwrapped(), c.policy.autocast,
                                   chunk_size=c.forward.chunk_size, pad_id=c.forward.pad_id)
            canary = {"train/canary_diff": check.diff, "train/canary_mismatch": check.mismatch,
                      "train/canary_moved_ratio": check.moved_ratio, "time/canary": check.seconds}
            if not all_across_ranks(acc, not check.drift):
                drift = check.moved_ratio
    except ServerError as exc:  # the update is done and kept: the loop logs the step, checkpoints it, stops
        lost = exc
    sync_diff = None
    if t.verify_sync and lost is None:
        sync_diff = c.engine.max_weight_diff(trainer_weights_for_engine(c.policy.unwrapped()))
    t_end = time.perf_counter()
    gen_busy = got.generate_seconds  # the engine's time on this batch (a prefetched one: its own time ahead)
    if prefetched is not None:
        gen_busy += (prefetched.finished or prefetched.started) - prefetched.started - blocked[0]

    # 7. Metrics: one key per quantity, tensors until the logger turns them into numbers.
    metrics = {**rollout_metrics(full_batch, full_scored), **got.metrics, **update.metrics, **pass_metrics,
               **mix_metrics, **canary}
    d = cfg.diagnostics
    if d.enabled:
        new_lp = None
        if d.post_update_logprobs and step % d.post_update_every == 0:
            new_lp = post_update_logprobs(c.policy, batch, advantages, update.first_logprobs, c.forward)
        metrics.update(step_metrics(DiagInputs(
            rewards=scored.rewards, group_ids=batch.group_ids, advantages=advantages,
            mask=batch.completion_mask, entropy=update.entropy, old_logprobs=update.first_logprobs,
            new_logprobs=new_lp, engine_logprobs=batch.engine_logprobs)))
    metrics.update({
        "train/grad_norm": c.policy.grad_norm(), "train/lr": c.policy.lr(),
        "time/generate": got.generate_seconds, "time/score": got.score_seconds,
        "time/advantage": t_pass - t_adv, "time/train": t_sync - t_train, "time/sync": t_end - t_sync,
        "time/step": time.perf_counter() - t_step,
        "rollout/tokens_per_s": float(full_batch.completion_lengths.sum()) / max(gen_busy, 1e-9),
    })
    if pushed is not None:
        metrics["time/weight_sync"] = pushed
    if sync_diff is not None:
        metrics["train/sync_max_abs_diff"] = sync_diff
    if full_batch.weight_version is not None:  # engines that count versions (server): which weights sampled
        metrics["rollout/weight_version"] = float(full_batch.weight_version)
        metrics["rollout/staleness"] = float(staleness)
    if c.prefetcher is not None:  # rollout.async: how this step's training and the next one's rollouts overlapped
        ahead = c.prefetcher.pending
        metrics["time/prefetch_wait"] = prefetch_wait
        if prefetched is not None:
            metrics["time/prefetch_blocked"] = blocked[0]
        if ahead is not None and ahead.finished is not None:
            metrics["time/generate_ahead"] = ahead.finished - ahead.started
            metrics["time/overlap"] = overlap_seconds((ahead.started, ahead.finished), (t_adv, t_sync))
    metrics = mean_across_ranks(acc, metrics, weight=len(got.drawn))
    metrics["rollout/distinct_prompts"] = distinct_across_ranks(acc, got.drawn)
    skips = int(sum_across_ranks(acc, update.nonfinite_skips))
    metrics["train/nonfinite_skips"] = skips
    samples = []
    if cfg.logging.sample_every and step % cfg.logging.sample_every == 0:
        samples = [Sample(got.problems[i // r.group_size].prompt, full_batch.completion_texts[i],
                          float(full_scored.rewards[i])) for i in range(0, full_batch.num_rows, r.group_size)]
    return StepResult(metrics=metrics, nonfinite_skips=skips, samples=samples, sync_max_abs_diff=sync_diff,
                      sync_drift=drift, server_error=lost)


# ----------------------------------------------------------------------------- loop


def train(cfg: RecipeConfig) -> Path:
    """Run the recipe: hold the run directory's lock, route the logs, set up, resume, train, export."""
    from rlkit.console import setup_run_logging
    from rlkit.trainer.guard import RunLock, RunLockedError, die_with_parent

    if os.environ.get("TORCHELASTIC_RUN_ID"):  # started by accelerate launch / torchrun: die with it
        die_with_parent()
    lock = None
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:  # one writer per run directory, checked before loading
        try:
            lock = RunLock(Path(cfg.run.output_dir)).acquire()
        except RunLockedError as exc:
            raise ConfigError(str(exc)) from None
    try:
        # The console shows rlkit's lines, warnings and the progress bar; the libraries' INFO
        # goes to the log file only (docs/training.md, "Console and logs").
        log_file = setup_run_logging(Path(cfg.run.output_dir), rank)
        if rank == 0:
            print(f"run directory: {cfg.run.output_dir} (full log: {log_file})", flush=True)
        return _train(cfg)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: RecipeConfig) -> Path:
    from dataclasses import asdict

    from rlkit.console import adopt_library_loggers
    from rlkit.rollout.server_engine import ServerError
    from rlkit.trainer.checkpoint import export_model, save_checkpoint
    from rlkit.trainer.collect import evaluate
    from rlkit.trainer.guard import kill_point
    from rlkit.trainer.tracking import RunLogger

    c = setup(cfg)
    adopt_library_loggers()  # transformers and DeepSpeed attach their own console handlers at import
    state = RunState(step=restore(cfg, c))
    if c.canary is not None:  # the floor: engine and trainer hold the same weights now
        first = c.canary.check(c.engine, c.policy.unwrapped(), c.policy.autocast, chunk_size=c.forward.chunk_size,
                               pad_id=c.forward.pad_id)
        log.info("weight-sync canary: floor %.3g nats (moves under %.3g nats are not judged)", first.diff,
                 c.canary.min_move)
    if c.accelerator.is_main_process:
        c.run_dir.mkdir(parents=True, exist_ok=True)
        (c.run_dir / "config.yaml").write_text(dump_config(cfg))
    logger = RunLogger(c.run_dir, accelerator=c.accelerator, tensorboard=cfg.logging.tensorboard,
                       trackers=list(cfg.logging.trackers), total_steps=cfg.trainer.max_steps,
                       progress=cfg.logging.progress, start_step=state.step, config=cfg.model_dump(mode="json"),
                       project=cfg.logging.project, run_name=cfg.run.name, offline=cfg.logging.offline)
    ev = cfg.eval
    do_eval = ev.enabled and bool(c.eval_problems)

    def held_out() -> dict[str, float]:
        return evaluate(c.engine, c.eval_problems, c.reward_fns[0], max_new_tokens=ev.max_new_tokens,
                        seed=cfg.trainer.seed, accelerator=c.accelerator, samples=ev.samples,
                        temperature=ev.temperature)

    if do_eval and state.step == 0:
        metrics0 = held_out()
        kill_point("eval_step0", 0)
        logger.log(0, metrics0)

    def checkpoint(step: int, sampler: dict) -> None:
        try:
            save_checkpoint(c.accelerator, c.run_dir, step,
                            {"sampler": sampler, "alarms": c.monitor.state_dict(),
                             "mixer": c.mixer.state_dict() if c.mixer is not None else {},
                             "run": run_identity(cfg, c.accelerator.num_processes)},
                            keep_last=cfg.trainer.keep_last)
        except OSError as exc:  # e.g. a full disk: the previous checkpoint is intact, stop here
            raise RunStopped(f"could not write the checkpoint of step {step} ({exc}); the newest complete "
                             f"checkpoint in {c.run_dir / 'checkpoints'} is intact: free space and rerun the "
                             "same command to resume from it") from None

    saved = state.step  # the newest step with a checkpoint (or the start)

    def server_lost(step: int, error: Exception, complete: int, sampler: dict) -> ServerError:
        """A rollout server is gone past its retries: checkpoint the last whole step, then stop (exit 4)."""
        if c.prefetcher is not None:
            c.prefetcher.close()
        if complete > saved:
            checkpoint(complete, sampler)
        done = max(saved, complete)
        where = (f"a resumable checkpoint of step {done} is in {c.run_dir / 'checkpoints'}" if done
                 else "no step had completed, nothing to resume")
        log.error("stopping in step %d: %s; %s", step, error, where)
        return ServerError(f"{error}. The run stopped in step {step}; {where}. Bring the server back (or point "
                           "rollout.servers at a running one) and rerun the same command to resume")

    stop_reason = None
    for step in range(state.step + 1, cfg.trainer.max_steps + 1):
        try:
            result = train_step(cfg, c, step)
        except ServerLost as lost:  # in the rollouts: nothing of this step is trained
            raise server_lost(step, lost.error, lost.complete, lost.sampler_state) from lost
        metrics = dict(result.metrics)
        error = result.server_error  # after the update: the step is logged and checkpointed, then the run stops
        # The last step's evaluation joins its record (before its checkpoint), so a run cut
        # after that checkpoint resumes with nothing to redo and logs nothing twice.
        if error is None and do_eval and ((ev.every and step % ev.every == 0) or step == cfg.trainer.max_steps):
            try:
                metrics.update(held_out())
            except ServerError as exc:
                error = exc
        values = logger.log(step, metrics)
        logger.samples(step, [asdict(s) for s in result.samples])
        for alarm in c.monitor.update(step, values):
            logger.alarm(alarm.to_dict())
            if alarm.name in cfg.diagnostics.stop_on:
                stop_reason = f"alarm '{alarm.name}' is in diagnostics.stop_on"
        if result.sync_drift is not None:
            alarm = {"name": "weight_sync_drift", "step": step, "value": result.sync_drift,
                     "message": f"after this step's weight sync the engine's logprobs of the canary probe moved "
                                f"{result.sync_drift:.2f} x as much as the trainer's (a correct sync is near 1, a "
                                "missed one 0): the engine is not serving the trained weights, so rollouts come "
                                "from a stale policy",
                     "action": "check the weight sync (rlkit/rollout/weight_sync.py) for this model and engine; "
                               "trainer.verify_sync: true compares the weights directly"}
            logger.alarm(alarm)
            if cfg.trainer.stop_on_sync_drift:
                stop_reason = "the weight-sync canary saw drift (trainer.stop_on_sync_drift)"
        state.skip_streak = state.skip_streak + 1 if result.nonfinite_skips else 0
        if state.skip_streak >= cfg.trainer.max_nonfinite_streak:
            stop_reason = (f"{state.skip_streak} consecutive steps with non-finite rewards, advantages or losses "
                           f"(trainer.max_nonfinite_streak={cfg.trainer.max_nonfinite_streak}); see the warnings "
                           "above for the rows")
        state.step = step
        if error is not None:
            raise server_lost(step, error, step, sampler_state(c)) from error
        if stop_reason or (cfg.trainer.checkpoint_every and step % cfg.trainer.checkpoint_every == 0) \
                or step == cfg.trainer.max_steps:
            checkpoint(step, sampler_state(c))
            saved = step
        if stop_reason:
            log.error("stopping at step %d: %s; resumable checkpoint written", step, stop_reason)
            break

    if cfg.trainer.export_final and not stop_reason:
        export_model(c.policy, c.engine.tokenizer, c.run_dir / "final_model", merge_lora=cfg.trainer.merge_lora_on_export)
    if c.prefetcher is not None:
        c.prefetcher.close()  # a stop can leave the next step's generation running
    logger.close()
    c.engine.close()
    if stop_reason:
        raise RunStopped(f"stopped at step {state.step}: {stop_reason}. A resumable checkpoint is in "
                         f"{c.run_dir / 'checkpoints'}; fix the cause and rerun the same command to resume")
    return c.run_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="recipe YAML (see recipes/configs/)")
    parser.add_argument("overrides", nargs="*", help="a.b.c=value overrides")
    args = parser.parse_args(argv)
    from rlkit.rollout.server_engine import ServerError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        run_dir = train(cfg)
    except ConfigError as exc:  # a setting only checkable at launch (e.g. against the process count)
        print(exc, file=sys.stderr)
        return 2
    except RunStopped as exc:  # an alarm in diagnostics.stop_on, or too many non-finite steps
        print(exc, file=sys.stderr)
        return 3
    except ServerError as exc:  # rollout.engine server: a server down, refused, or out of retries
        print(exc, file=sys.stderr)
        return 4
    print(f"run directory: {run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
