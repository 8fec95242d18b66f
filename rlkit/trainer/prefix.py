"""Trainer forward for grouped completions: plain layout and shared-prefix (Prefix Grouper).

GRPO-style training samples G completions per prompt, so the plain forward encodes every
prompt G times. Prefix Grouper (Liu et al., arXiv 2506.05433) packs one row per prompt,
[prefix; c_1; ...; c_G], and lets each completion attend to the single copy of the prefix.
Prefix states depend only on prefix tokens (causal decoder), and a completion token at
position P+t sees exactly the prefix and its own tokens <= t, so per-token logprobs and
parameter gradients equal the plain forward's (gradients from the G completions add up in
the shared prefix activations, as they would add up over G copies in the plain batch).

How this differs from the paper's implementation: the official code (GitHub
johncaged/PrefixGrouper, `src/prefix_grouper/forward.py`) splits q/k/v into prefix
and suffix tensors inside every attention layer (`AttentionForward`) and runs two attention
calls. We keep the model untouched and express the same attention pattern as a custom 4D
boolean mask [R, 1, L, L] plus explicit position ids; transformers (5.x, SDPA/eager) passes a
4D mask to the kernel unchanged. That costs O(L^2) mask memory per row and a dense masked
attention instead of two dense ones, but needs no model patching and works for any decoder
that honours a 4D mask. Gotcha (the official code handles it with
`split_output(..., include_prefix_last=1)`): the first completion token is predicted from the
last *prefix* token, not from the token before it in the packed row.

Both paths return logprobs in the same [N, T] layout: logprobs[i, t] =
log p(completion[i, t] | prompt, completion[i, :t]), 0 where the mask is False.
The batch is moved to the model's device first (rollouts arrive on the CPU); the outputs stay
on the model's device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rlkit.trainer.logprobs import _base_model, causal_lm_hidden, lm_head_of, selective_logprobs

__all__ = [
    "ForwardBatch",
    "ForwardOutput",
    "PackedLayout",
    "plain_layout",
    "shared_prefix_layout",
    "logprobs_from_layout",
    "plain_logprobs",
    "shared_prefix_logprobs",
    "compute_logprobs",
]


@dataclass
class ForwardBatch:
    """Rows to score: N completions continuing B prompts.

    Tokens after a row's last True mask position are padding and are not fed to the model;
    masked tokens *before* it (e.g. tool output inside a completion) are fed as context and
    get logprob 0.
    """

    prompt_ids: list[list[int]]  # B prompts, each non-empty
    completion_ids: Tensor  # [N, T] long, right-padded
    completion_mask: Tensor  # [N, T] bool, True = token whose logprob counts
    group_ids: Tensor  # [N] long, rows continuing one prompt share an id
    prompt_index: Tensor | None = None  # [N] long: row i continues prompt_ids[prompt_index[i]]; defaults to group_ids

    def __post_init__(self) -> None:
        if self.prompt_index is None:
            self.prompt_index = self.group_ids
        N, T = self.completion_ids.shape
        if self.completion_mask.shape != (N, T) or self.completion_mask.dtype != torch.bool:
            raise ValueError(f"completion_mask must be bool [{N}, {T}], got "
                             f"{self.completion_mask.dtype} {tuple(self.completion_mask.shape)}")
        if self.prompt_index.shape != (N,) or self.group_ids.shape != (N,):
            raise ValueError(f"group_ids and prompt_index must have shape [{N}]")
        if any(len(p) == 0 for p in self.prompt_ids):
            raise ValueError("every prompt needs at least one token (it predicts the first completion token)")

    @property
    def completion_lengths(self) -> Tensor:
        """[N] long: 1 + index of the last True mask position (0 for an all-False row)."""
        T = self.completion_mask.shape[1]
        t1 = torch.arange(1, T + 1, device=self.completion_mask.device)  # [T]
        return (self.completion_mask * t1).amax(-1)  # [N]

    def to(self, device: torch.device | str) -> ForwardBatch:
        """This batch with its tensors on `device` (itself when they are already there)."""
        device = torch.device(device)
        if self.completion_ids.device == device:
            return self
        return ForwardBatch(
            prompt_ids=self.prompt_ids,
            completion_ids=self.completion_ids.to(device),
            completion_mask=self.completion_mask.to(device),
            group_ids=self.group_ids.to(device),
            prompt_index=self.prompt_index.to(device),
        )

    def select(self, rows: Tensor) -> ForwardBatch:
        """Micro-batch of `rows` [n] carrying only the prompts those rows use."""
        used, new_index = torch.unique(self.prompt_index[rows], return_inverse=True)  # [b], [n]
        return ForwardBatch(
            prompt_ids=[self.prompt_ids[b] for b in used.tolist()],
            completion_ids=self.completion_ids[rows],
            completion_mask=self.completion_mask[rows],
            group_ids=self.group_ids[rows],
            prompt_index=new_index,
        )


@dataclass
class ForwardOutput:
    logprobs: Tensor  # [N, T] fp32, 0 where completion_mask is False
    entropy: Tensor | None  # [N, T] fp32 (detached unless entropy_grad), 0 where masked
    hidden: Tensor | None = None  # [N, T, H] final hidden state predicting each completion token (with_hidden)


@dataclass
class PackedLayout:
    """Model inputs for R rows of width L, and where each completion token's predictor sits."""

    input_ids: Tensor  # [R, L] long
    position_ids: Tensor  # [R, L] long
    attention_mask: Tensor  # [R, L] (plain) or [R, 1, L, L] bool (shared prefix), True = attend
    source_index: Tensor  # [N, T] long, flat index into the [R * L] hidden states predicting completion[i, t]
    valid: Tensor  # [N, T] bool, completion_mask and t < length: positions that get a logprob


def _padded_prompts(prompts: list[list[int]], pad_id: int, device) -> tuple[Tensor, Tensor]:
    """Right-padded prompt tensor [B, Pmax] and lengths [B]."""
    lens = torch.tensor([len(p) for p in prompts], dtype=torch.long)
    out = torch.full((len(prompts), int(lens.max())), pad_id, dtype=torch.long)
    for b, p in enumerate(prompts):
        out[b, : len(p)] = torch.as_tensor(p, dtype=torch.long)
    return out.to(device), lens.to(device)


def plain_layout(batch: ForwardBatch, pad_id: int = 0) -> PackedLayout:
    """One row per completion: [prompt; completion; pad], right-padded, 2D mask, positions 0..L-1."""
    N, T = batch.completion_ids.shape
    dev = batch.completion_ids.device
    prompts, plen = _padded_prompts(batch.prompt_ids, pad_id, dev)  # [B, Pmax], [B]
    P = plen[batch.prompt_index]  # [N]
    lengths = batch.completion_lengths  # [N]
    t = torch.arange(T, device=dev)  # [T]
    fits = t < lengths[:, None]  # [N, T]
    L = prompts.shape[1] + T
    tail = torch.full((N, T), pad_id, dtype=torch.long, device=dev)
    ids = torch.cat([prompts[batch.prompt_index], tail], 1)  # [N, L]
    # completion token t of row i goes to column P_i + t (overwriting prompt padding)
    ids.scatter_(1, P[:, None] + t, torch.where(fits, batch.completion_ids, pad_id))
    cols = torch.arange(L, device=dev)  # [L]
    return PackedLayout(
        input_ids=ids,
        position_ids=cols.expand(N, L),
        attention_mask=(cols < (P + lengths)[:, None]).long(),  # [N, L]
        source_index=torch.arange(N, device=dev)[:, None] * L + P[:, None] - 1 + t,  # [N, T]
        valid=fits & batch.completion_mask,
    )


def shared_prefix_layout(batch: ForwardBatch, pad_id: int = 0) -> PackedLayout:
    """Prefix Grouper layout (arXiv 2506.05433): one row per used prompt,
    [prefix; c_1[:len_1]; ...; c_G[:len_G]; pad], positions restarting at P for each completion,
    and a block mask: prefix causal; completion -> whole prefix + itself causally; pad -> itself.
    """
    N, T = batch.completion_ids.shape
    dev = batch.completion_ids.device
    # Host syncs (layout needs ints): which prompts get a row, and the packed width L.
    used, row = torch.unique(batch.prompt_index, return_inverse=True)  # [R], [N]
    prompts, plen = _padded_prompts([batch.prompt_ids[b] for b in used.tolist()], pad_id, dev)
    R, Pmax = prompts.shape
    lengths = batch.completion_lengths  # [N]
    # start column of completion i: P_row + lengths of the earlier completions of its row
    earlier = (row[:, None] == row[None, :]) & torch.ones(N, N, dtype=torch.bool, device=dev).tril(-1)
    offset = plen[row] + (earlier * lengths).sum(-1)  # [N] (no integer matmul: CUDA lacks one)
    row_len = plen + torch.zeros_like(plen).index_add_(0, row, lengths)  # [R]
    L = int(row_len.max())

    # Fill flat [R*L (+1 dummy slot for tokens past a completion's length)] buffers.
    ids = torch.full((R * L + 1,), pad_id, dtype=torch.long, device=dev)
    seg = torch.full((R * L + 1,), -1, dtype=torch.long, device=dev)  # -1 pad, 0 prefix, i+1 completion i
    pos = torch.zeros(R * L + 1, dtype=torch.long, device=dev)
    p_cols = torch.arange(Pmax, device=dev)  # [Pmax]
    in_prompt = p_cols < plen[:, None]  # [R, Pmax]
    p_dest = torch.where(in_prompt, torch.arange(R, device=dev)[:, None] * L + p_cols, R * L)
    ids[p_dest], seg[p_dest], pos[p_dest] = prompts, 0, p_cols.expand(R, Pmax)
    t = torch.arange(T, device=dev)  # [T]
    fits = t < lengths[:, None]  # [N, T]
    c_dest = torch.where(fits, (row * L + offset)[:, None] + t, R * L)  # [N, T]
    ids[c_dest] = batch.completion_ids
    seg[c_dest] = torch.arange(1, N + 1, device=dev)[:, None].expand(N, T)
    pos[c_dest] = plen[row][:, None] + t  # positions restart at P for every completion
    ids, seg, pos = (x[: R * L].view(R, L) for x in (ids, seg, pos))  # [R, L]

    q, k = seg[:, :, None], seg[:, None, :]  # [R, L, 1], [R, 1, L]
    causal = torch.ones(L, L, dtype=torch.bool, device=dev).tril()  # [L, L]
    eye = torch.eye(L, dtype=torch.bool, device=dev)  # padding attends to itself: no NaN rows
    mask = (causal & (k >= 0) & ((k == q) | (k == 0))) | eye  # [R, L, L]

    # predictor of completion[i, t]: column offset_i + t - 1, except t = 0 -> last prefix token
    src_col = torch.where(t == 0, plen[row][:, None] - 1, offset[:, None] + t - 1)  # [N, T]
    src = torch.where(fits, row[:, None] * L + src_col, 0)  # [N, T]
    return PackedLayout(ids, pos, mask[:, None], src, fits & batch.completion_mask)


def _model_device(model: nn.Module) -> torch.device:
    """Where the model's weights live (rollout batches arrive on the CPU)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _attn_implementation(model: nn.Module) -> str | None:
    return getattr(getattr(_base_model(model), "config", None), "_attn_implementation", None)


def logprobs_from_layout(
    model: nn.Module,
    layout: PackedLayout,
    batch: ForwardBatch,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    with_entropy: bool = True,
    entropy_grad: bool = False,
    with_hidden: bool = False,
) -> ForwardOutput:
    """Decoder forward on `layout`, then chunked logprobs of the completion tokens [N, T].
    `with_hidden` also returns the hidden states that predict them ([N, T, H], for statistics
    such as Token Hidden Reward; the caller keeps them only as long as one micro-batch)."""
    mask = layout.attention_mask
    if mask.dtype == torch.bool and mask.dim() == 4 and _attn_implementation(model) == "eager":
        # transformers' eager attention *adds* the 4D mask to the scores, so a bool mask would
        # silently add 0/1 (seen on 5.19); eager needs the additive float form. SDPA takes bool.
        dtype = next(model.parameters()).dtype
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            ~mask, torch.finfo(dtype).min
        )
    hidden = causal_lm_hidden(model, layout.input_ids, mask, layout.position_ids)
    h = hidden.flatten(0, 1)[layout.source_index]  # [N, T, H]
    weight, bias = lm_head_of(model)
    targets = torch.where(layout.valid, batch.completion_ids, 0)  # [N, T], pad ids may be out of vocab
    lp, ent = selective_logprobs(
        h, weight, targets, temperature=temperature, chunk_size=chunk_size,
        with_entropy=with_entropy, lm_head_bias=bias, entropy_grad=entropy_grad,
    )  # [N, T], [N, T] | None
    zero = lp.new_zeros(())
    lp = torch.where(layout.valid, lp, zero)
    if ent is not None:
        ent = torch.where(layout.valid, ent, zero)
    return ForwardOutput(logprobs=lp, entropy=ent, hidden=h if with_hidden else None)


def plain_logprobs(
    model: nn.Module,
    batch: ForwardBatch,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    pad_id: int = 0,
    with_entropy: bool = True,
    entropy_grad: bool = False,
    with_hidden: bool = False,
) -> ForwardOutput:
    """Reference forward: one [prompt; completion] row per completion."""
    batch = batch.to(_model_device(model))
    return logprobs_from_layout(
        model, plain_layout(batch, pad_id), batch, temperature=temperature,
        chunk_size=chunk_size, with_entropy=with_entropy, entropy_grad=entropy_grad, with_hidden=with_hidden,
    )


def shared_prefix_logprobs(
    model: nn.Module,
    batch: ForwardBatch,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    pad_id: int = 0,
    with_entropy: bool = True,
    entropy_grad: bool = False,
    with_hidden: bool = False,
) -> ForwardOutput:
    """Prefix Grouper forward (arXiv 2506.05433): each prompt encoded once per micro-batch.

    Same output layout and values as `plain_logprobs`. Needs an attention implementation
    that honours a 4D boolean mask ("sdpa" or "eager"; not flash-attention-2).
    """
    attn = _attn_implementation(model)
    if attn is not None and attn not in ("sdpa", "eager"):
        raise ValueError(
            f"trainer.shared_prefix needs attn_implementation 'sdpa' or 'eager' (a 4D mask), got {attn!r}"
        )
    batch = batch.to(_model_device(model))
    return logprobs_from_layout(
        model, shared_prefix_layout(batch, pad_id), batch, temperature=temperature,
        chunk_size=chunk_size, with_entropy=with_entropy, entropy_grad=entropy_grad, with_hidden=with_hidden,
    )


def compute_logprobs(
    model: nn.Module, batch: ForwardBatch, *, shared_prefix: bool, **kw
) -> ForwardOutput:
    """Trainer entry point; `shared_prefix` comes from config `trainer.shared_prefix`."""
    fn = shared_prefix_logprobs if shared_prefix else plain_logprobs
    return fn(model, batch, **kw)
