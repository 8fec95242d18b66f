"""GRPO (and its family) on math problems: vLLM rollouts, DeepSpeed updates, weight sync.

Launch:
    accelerate launch --config_file launch/accelerate/zero2_single.yaml \\
        recipes/grpo_math.py --config recipes/configs/grpo_math_cpu.yaml [a.b=c ...]

One step:
    sample B prompts -> G completions each (vLLM) -> rewards -> advantages
    -> num_iterations x mini_batches of forward/loss/backward/step (DeepSpeed)
    -> push the new weights into vLLM -> metrics, diagnostics, checkpoint.
The algorithm is whatever the config names: advantage estimator, loss class, coefficients.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine, see ENVIRONMENT.md
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from rlkit.config import ConfigError, RecipeConfig, dump_config, load_config  # noqa: E402

log = logging.getLogger("grpo_math")


# ----------------------------------------------------------------------------- setup


def setup(cfg: RecipeConfig):
    """Everything the loop needs, built in dependency order."""
    import torch

    import rewards as reward_registry
    from rlkit.algorithms.losses import build_loss
    from rlkit.algorithms.regularizers import build_regularizer
    from rlkit.assets import resolve_model
    from rlkit.data import PromptSampler, load_problems
    from rlkit.diagnostics.alarms import AlarmMonitor
    from rlkit.platform import resolve_dtype
    from rlkit.rollout.engine import build_engine
    from rlkit.trainer.deepspeed import build_accelerator, build_policy, load_causal_lm
    from rlkit.trainer.loop import ForwardSettings, RewardFunction

    run_dir = Path(cfg.run.output_dir)
    torch.manual_seed(cfg.trainer.seed)
    accelerator = build_accelerator(cfg.trainer, cfg.model, list(cfg.logging.trackers), str(run_dir))
    if cfg.rollout.prompts_per_step % accelerator.num_processes:
        raise ConfigError(f"rollout.prompts_per_step: {cfg.rollout.prompts_per_step} prompts cannot be split "
                          f"evenly over {accelerator.num_processes} processes; use a multiple of "
                          f"{accelerator.num_processes}")
    model_path = resolve_model(cfg.model.name_or_path)
    policy = build_policy(accelerator, model_path, cfg.model, cfg.trainer)

    loss_fn = build_loss(cfg.loss.target, **cfg.loss.params)
    regularizers = [(spec.coef, build_regularizer(spec.name, **spec.params)) for spec in cfg.regularizers]
    ref_model = None
    if getattr(loss_fn, "kl_coef", 0.0):
        ref_model = load_causal_lm(resolve_model(cfg.model.ref_model or cfg.model.name_or_path), trainable=False)
        ref_model.to(accelerator.device)  # the policy's device (DeepSpeed moved the policy there)

    r = cfg.rollout
    engine = build_engine(
        r.engine, model_path, dtype=resolve_dtype(r.dtype), seed=cfg.trainer.seed, chat_template=r.chat_template,
        max_model_len=r.max_model_len, gpu_memory_utilization=r.gpu_memory_utilization,
        cpu_kvcache_gib=r.cpu_kvcache_gib, enforce_eager=r.enforce_eager,
        distributed_executor_backend="external_launcher" if accelerator.num_processes > 1 else None,
    )
    train_problems, eval_problems = load_problems(cfg.data)
    sampler = PromptSampler(len(train_problems), seed=cfg.data.seed)
    reward_fns = [RewardFunction(s.name, reward_registry.get_reward(s.name), s.weight, dict(s.params))
                  for s in cfg.rewards]
    d = cfg.diagnostics
    monitor = AlarmMonitor(entropy_collapse_frac=d.entropy_collapse_frac, zero_adv_frac=d.zero_adv_frac,
                           grad_z_threshold=d.grad_z_threshold, window=d.window, warmup=d.warmup,
                           reward_rise_tol=d.reward_rise_tol, converged_frac=d.converged_frac)
    pad_id = engine.tokenizer.pad_token_id if engine.tokenizer.pad_token_id is not None else 0
    fs = ForwardSettings(temperature=max(r.temperature, 1e-5), chunk_size=cfg.trainer.logprob_chunk_size,
                         pad_id=pad_id, shared_prefix=cfg.trainer.shared_prefix,
                         micro_batch_tokens=cfg.trainer.micro_batch_tokens)
    return dict(run_dir=run_dir, accelerator=accelerator, policy=policy, loss_fn=loss_fn, regularizers=regularizers,
                ref_model=ref_model,
                engine=engine, train_problems=train_problems, eval_problems=eval_problems, sampler=sampler,
                reward_fns=reward_fns, monitor=monitor, fs=fs)


def restore(cfg: RecipeConfig, s: dict) -> int:
    """Resume from the newest checkpoint in the run directory, if any. Returns the start step."""
    from rlkit.trainer.checkpoint import latest_checkpoint, load_checkpoint
    from rlkit.trainer.loop import sync_weights

    ckpt = latest_checkpoint(s["run_dir"]) if cfg.run.resume else None
    if ckpt is None:
        return 0
    state = load_checkpoint(s["accelerator"], ckpt)
    s["sampler"].load_state_dict(state["sampler"])
    s["monitor"].load_state_dict(state["alarms"])
    sync_weights(s["engine"], s["policy"])  # the engine starts from the base model: bring it up to date
    return int(state["step"])


# ----------------------------------------------------------------------------- one step


def train_step(cfg: RecipeConfig, s: dict, step: int) -> dict:
    import torch

    from rlkit.diagnostics.metrics import DiagInputs, step_metrics
    from rlkit.rollout.types import SamplingConfig
    from rlkit.trainer.loop import (
        all_across_ranks,
        collect_rollouts,
        compute_advantages,
        mean_across_ranks,
        policy_update,
        rank_shard,
        rollout_metrics,
        score_rollouts,
        seed_rollout,
        sync_weights,
    )

    r, t, acc = cfg.rollout, cfg.trainer, s["accelerator"]
    t0 = time.perf_counter()
    sampling = SamplingConfig(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                              max_new_tokens=r.max_new_tokens, stop=list(r.stop))
    mine: list[int] = []  # indices of the prompts this rank drew this step
    score_seconds = 0.0

    def draw():
        # Every rank draws the same indices (one sampler state) and keeps its share of them.
        share = rank_shard(s["sampler"].next_indices(r.prompts_per_step), acc.process_index, acc.num_processes)
        mine.extend(share)
        return [s["train_problems"][i] for i in share]

    def generate(problems):
        return s["engine"].generate([p.prompt for p in problems], r.group_size, sampling)

    def score(batch, problems):
        nonlocal score_seconds
        ts = time.perf_counter()
        scored = score_rollouts(batch, problems, s["reward_fns"])
        score_seconds += time.perf_counter() - ts
        return scored

    seed_rollout(t.seed, step, acc.process_index)
    got = collect_rollouts(draw, generate, score, dynamic=r.dynamic_sampling, max_rounds=r.max_sampling_rounds,
                           pad_id=s["fs"].pad_id, all_ranks=lambda done: all_across_ranks(acc, done))
    batch, problems, scored = got.batch, got.problems, got.scored
    batch.rewards = scored.rewards
    generate_seconds = time.perf_counter() - t0 - score_seconds
    ts = time.perf_counter()
    advantages = compute_advantages(cfg.advantage.name, cfg.advantage.params, scored.rewards,
                                    batch.group_ids, batch.completion_mask)
    t2 = time.perf_counter()
    score_seconds += t2 - ts

    old = batch.engine_logprobs if t.use_engine_logprobs else None
    if old is None and (t.num_iterations > 1 or t.mini_batches > 1):
        from rlkit.trainer.loop import batch_logprobs

        old, _ = batch_logprobs(s["policy"].unwrapped(), batch, s["fs"], s["policy"].autocast)
    update = policy_update(s["policy"], s["loss_fn"], batch, advantages, old_logprobs=old,
                           ref_model=s["ref_model"], fs=s["fs"], num_iterations=t.num_iterations,
                           mini_batches=t.mini_batches, regularizers=s["regularizers"])
    t3 = time.perf_counter()
    sync_seconds = sync_weights(s["engine"], s["policy"])
    if t.verify_sync:
        from rlkit.trainer.loop import engine_weight_mismatch

        s["sync_diff"] = engine_weight_mismatch(s["engine"], s["policy"])

    metrics = {**rollout_metrics(batch, scored), **got.metrics, **update.metrics}
    if cfg.diagnostics.enabled:
        new_lp = None
        if cfg.diagnostics.post_update_logprobs:
            from rlkit.trainer.loop import post_update_logprobs

            new_lp = post_update_logprobs(s["policy"], batch, advantages, update.first_logprobs, s["fs"])
        diag = step_metrics(DiagInputs(
            rewards=scored.rewards, group_ids=batch.group_ids, advantages=advantages,
            mask=batch.completion_mask, entropy=update.entropy, old_logprobs=update.first_logprobs,
            new_logprobs=new_lp, engine_logprobs=batch.engine_logprobs,
            truncated=torch.tensor([f == "length" for f in batch.finish_reason])))
        metrics.update(diag)
    metrics.update({
        "train/grad_norm": s["policy"].grad_norm() or float("nan"), "train/lr": s["policy"].lr(),
        "train/nonfinite_skips": update.nonfinite_skips,
        "time/generate": generate_seconds, "time/score": score_seconds, "time/train": t3 - t2, "time/sync": sync_seconds,
        "time/step": time.perf_counter() - t0, "rollout/tokens_per_s": float(batch.completion_lengths.sum()) / generate_seconds,
    })
    if cfg.logging.sample_every and step % cfg.logging.sample_every == 0:
        s["samples"] = [{"prompt": problems[i // r.group_size].prompt, "completion": batch.completion_texts[i],
                         "reward": float(scored.rewards[i])} for i in range(0, len(batch.completion_texts), r.group_size)]
    if "sync_diff" in s:
        metrics["train/sync_max_abs_diff"] = s.pop("sync_diff")
    metrics = mean_across_ranks(acc, metrics, weight=len(mine))
    metrics["rollout/distinct_prompts"] = _distinct_across_ranks(acc, mine)
    return metrics


def _distinct_across_ranks(accelerator, indices: list[int]) -> int:
    """How many different prompts all ranks together trained on this step (= prompts_per_step
    unless ranks duplicate work)."""
    if accelerator.num_processes == 1:
        return len(set(indices))
    from accelerate.utils import gather_object

    return len(set(gather_object(list(indices))))


# ----------------------------------------------------------------------------- loop


def train(cfg: RecipeConfig) -> Path:
    from rlkit.trainer.checkpoint import export_model, save_checkpoint
    from rlkit.trainer.loop import evaluate
    from rlkit.trainer.tracking import RunLogger

    s = setup(cfg)
    run_dir, policy, engine = s["run_dir"], s["policy"], s["engine"]
    start = restore(cfg, s)
    if s["accelerator"].is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_config(cfg))
    logger = RunLogger(run_dir, accelerator=s["accelerator"], tensorboard=cfg.logging.tensorboard,
                       trackers=list(cfg.logging.trackers), total_steps=cfg.trainer.max_steps,
                       progress=cfg.logging.progress, start_step=start, config=cfg.model_dump(mode="json"))
    ev = cfg.eval
    do_eval = ev.enabled and s["eval_problems"]
    if do_eval and start == 0:
        logger.log(0, evaluate(engine, s["eval_problems"], s["reward_fns"][0], max_new_tokens=ev.max_new_tokens,
                               seed=cfg.trainer.seed, accelerator=s["accelerator"]))

    def checkpoint(step: int) -> None:
        save_checkpoint(s["accelerator"], run_dir, step,
                        {"sampler": s["sampler"].state_dict(), "alarms": s["monitor"].state_dict()},
                        keep_last=cfg.trainer.keep_last)

    stop_reason = None
    for step in range(start + 1, cfg.trainer.max_steps + 1):
        metrics = train_step(cfg, s, step)
        if do_eval and ev.every and step % ev.every == 0 and step != cfg.trainer.max_steps:
            metrics.update(evaluate(engine, s["eval_problems"], s["reward_fns"][0],
                                    max_new_tokens=ev.max_new_tokens, seed=cfg.trainer.seed,
                                    accelerator=s["accelerator"]))
        values = logger.log(step, metrics)
        logger.samples(step, s.pop("samples", []))
        for alarm in s["monitor"].update(step, values):
            logger.alarm(alarm.to_dict())
            if alarm.name in cfg.diagnostics.stop_on:
                stop_reason = f"alarm '{alarm.name}' is in diagnostics.stop_on"
        if _consecutive_skips(s, values) >= 3:
            stop_reason = "3 consecutive steps with non-finite losses"
        if stop_reason or (cfg.trainer.checkpoint_every and step % cfg.trainer.checkpoint_every == 0) \
                or step == cfg.trainer.max_steps:
            checkpoint(step)
        if stop_reason:
            log.error("stopping at step %d: %s; resumable checkpoint written", step, stop_reason)
            break

    if do_eval and not stop_reason:
        logger.log(cfg.trainer.max_steps, evaluate(engine, s["eval_problems"], s["reward_fns"][0],
                                                   max_new_tokens=ev.max_new_tokens, seed=cfg.trainer.seed,
                                                   accelerator=s["accelerator"]))
    if cfg.trainer.export_final and not stop_reason:
        export_model(policy, engine.tokenizer, run_dir / "final_model", merge_lora=cfg.trainer.merge_lora_on_export)
    logger.close()
    engine.close()
    return run_dir


def _consecutive_skips(s: dict, values: dict) -> int:
    s["skip_streak"] = s.get("skip_streak", 0) + 1 if values.get("train/nonfinite_skips", 0) else 0
    return s["skip_streak"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="recipe YAML (see recipes/configs/)")
    parser.add_argument("overrides", nargs="*", help="a.b.c=value overrides")
    args = parser.parse_args(argv)
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
    print(f"run directory: {run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
