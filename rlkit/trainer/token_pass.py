"""The old-policy token pass: one no-grad forward over a rollout batch, before the update.

It returns each completion token's logprob and entropy at the sampling temperature (the old
logprobs when the batch is reused, HAPO's entropy statistics over the whole batch) and, when a
token-weight function asks for it (`TokenWeighter.needs_hidden`, e.g. THR), a per-token
statistic of the final hidden states computed group by group.

Memory: the pass walks the batch in forwards of whole groups under the trainer's token budget
(`micro_batch_tokens`), on the chunked-vocabulary path with at most `LOGIT_BUDGET` logits per
chunk, so it never holds [N, T, V] logits (its peak does not grow with the vocabulary), and
hidden states [n, T, H] only for the rows of one forward. A group larger than the budget is
split into several forwards (logged); its statistic then takes two sweeps: one accumulates the
group's additive state (THR's M+) over the parts holding correct rows, one scores every part.

The pass runs only when something needs it (`needs_token_pass`); otherwise it costs nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from rlkit.algorithms.token_weights import GroupChunk, TokenWeighter, group_vocab
from rlkit.rollout.types import RolloutBatch
from rlkit.trainer.logprobs import lm_head_of
from rlkit.trainer.prefix import compute_logprobs
from rlkit.trainer.update import forward_batch, micro_batches

log = logging.getLogger(__name__)

__all__ = ["LOGIT_BUDGET", "TokenPass", "group_packs", "token_pass"]

# Logits per chunk of the pass's chunked-vocabulary path: trainer.logprob_chunk_size tokens at
# SmolLM2's vocabulary (49,152). With a larger vocabulary the pass takes fewer tokens per
# chunk, so its peak memory stays the same whatever the vocabulary size (bench/token_pass_memory.py).
LOGIT_BUDGET = 1024 * 49_152


@dataclass
class TokenPass:
    """Per-token outputs of the old-policy pass, [N, T] fp32 on the CPU (0 on padding)."""

    logprobs: Tensor
    entropy: Tensor
    scores: Tensor | None   # the weighter's hidden-state statistic, when it declares needs_hidden
    seconds: float          # wall time of the pass (`time/token_pass`)
    forwards: int           # model forwards run
    split_groups: int       # groups larger than the token budget, run in several forwards


def _group_cost(batch: RolloutBatch, rows: list[int], shared_prefix: bool) -> int:
    """Tokens a forward of these rows (one group) feeds the model."""
    prompt = len(batch.prompt_ids[int(batch.prompt_index[rows[0]])])
    completions = int(batch.completion_lengths[rows].sum())
    return completions + prompt * (1 if shared_prefix else len(rows))


def group_packs(batch: RolloutBatch, budget: int, *, shared_prefix: bool) -> list[list[int]]:
    """Consecutive whole groups packed into forwards of at most `budget` tokens; a group over
    the budget on its own is a pack of one (the pass splits it). Returns lists of group numbers
    (row blocks of `batch.group_size`)."""
    g = batch.group_size
    packs, current, cost = [], [], 0
    for k in range(batch.num_prompts):
        c = _group_cost(batch, list(range(k * g, (k + 1) * g)), shared_prefix)
        if current and cost + c > budget:
            packs.append(current)
            current, cost = [], 0
        current.append(k)
        cost += c
    if current:
        packs.append(current)
    return packs


def _forward(model, batch: RolloutBatch, rows: Tensor, fs, autocast, with_hidden: bool):
    fb = forward_batch(batch, rows)
    with autocast():
        out = compute_logprobs(model, fb, shared_prefix=fs.shared_prefix, temperature=fs.temperature,
                               chunk_size=fs.chunk_size, pad_id=fs.pad_id, with_entropy=True,
                               with_hidden=with_hidden)
    return fb, out


@torch.no_grad()
def token_pass(model, batch: RolloutBatch, fs, autocast, *, weighter: TokenWeighter | None = None,
               correct: Tensor | None = None) -> TokenPass:
    """Old-policy logprobs and entropy of every row and, for a weighter that declares
    `needs_hidden`, its per-token statistic (`correct` [N] bool marks the rows it accumulates
    over). `fs` is the trainer's ForwardSettings; `autocast` the policy's autocast context."""
    t0 = time.perf_counter()
    vocab_size = lm_head_of(model)[0].shape[0]
    fs = replace(fs, chunk_size=max(1, min(fs.chunk_size, LOGIT_BUDGET // vocab_size)))
    n, t = batch.completion_ids.shape
    logp, ent = torch.zeros(n, t), torch.zeros(n, t)
    hidden_stat = weighter is not None and weighter.needs_hidden
    if hidden_stat and correct is None:
        raise ValueError(f"{type(weighter).__name__} needs the rows' correctness (correct=[N] bool)")
    scores = torch.zeros(n, t) if hidden_stat else None
    head = lm_head_of(model) if hidden_stat else None
    g = batch.group_size
    forwards = split = 0

    def chunk(fb, out, local: Tensor, rows: Tensor, vocab: Tensor) -> GroupChunk:
        dev = out.logprobs.device
        return GroupChunk(hidden=out.hidden[local], targets=fb.completion_ids[local].to(dev),
                          logprobs=out.logprobs[local], mask=fb.completion_mask[local].to(dev),
                          correct=correct[rows].to(dev), weight=head[0], bias=head[1],
                          temperature=fs.temperature, vocab=vocab.to(dev), chunk_size=fs.chunk_size)

    def keep(rows: Tensor, out) -> None:
        logp[rows, : out.logprobs.shape[1]] = out.logprobs.float().cpu()
        ent[rows, : out.entropy.shape[1]] = out.entropy.float().cpu()

    for pack in group_packs(batch, fs.micro_batch_tokens, shared_prefix=fs.shared_prefix):
        rows = torch.cat([torch.arange(k * g, (k + 1) * g) for k in pack])
        whole = len(pack) > 1 or _group_cost(batch, rows.tolist(), fs.shared_prefix) <= fs.micro_batch_tokens
        if whole or not hidden_stat:
            fb, out = _forward(model, batch, rows, fs, autocast, hidden_stat)
            forwards += 1
            keep(rows, out)
            if hidden_stat:
                for j in range(len(pack)):
                    local = torch.arange(j * g, (j + 1) * g)
                    grows = rows[local]
                    vocab = group_vocab(batch.completion_ids[grows], batch.completion_mask[grows])
                    c = chunk(fb, out, local, grows, vocab)
                    scores[grows, : out.logprobs.shape[1]] = weighter.group_scores(c, weighter.group_state(c)).cpu()
            del out
            continue
        # One group over the budget: sweep 1 accumulates its state over the parts holding a
        # correct row, sweep 2 scores every part against the whole state.
        split += 1
        parts = micro_batches(rows, batch, fs.micro_batch_tokens, shared_prefix=fs.shared_prefix)
        log.info("token pass: group %d (%d tokens) exceeds trainer.micro_batch_tokens=%d; running it in "
                 "%d forwards", pack[0], _group_cost(batch, rows.tolist(), fs.shared_prefix),
                 fs.micro_batch_tokens, len(parts))
        vocab = group_vocab(batch.completion_ids[rows], batch.completion_mask[rows])
        state = None
        for part in parts:
            if not correct[part].any():
                continue
            fb, out = _forward(model, batch, part, fs, autocast, True)
            forwards += 1
            s = weighter.group_state(chunk(fb, out, torch.arange(len(part)), part, vocab))
            state = s if state is None else state + s
            del out
        for part in parts:
            fb, out = _forward(model, batch, part, fs, autocast, True)
            forwards += 1
            keep(part, out)
            if state is not None:
                c = chunk(fb, out, torch.arange(len(part)), part, vocab)
                scores[part, : out.logprobs.shape[1]] = weighter.group_scores(c, state).cpu()
            del out
    return TokenPass(logp, ent, scores, time.perf_counter() - t0, forwards, split)
