"""Memory-efficient per-token logprobs and entropy for the trainer forward.

The policy-gradient losses need, for every completion token, the log-probability of the
sampled token and (for diagnostics / entropy bonuses) the entropy of the full next-token
distribution. The textbook way materialises logits [N, T, V] in fp32 plus a log-softmax of
the same size, and autograd keeps both for backward: at N*T = 32k rows and V = 49k that is
~6.4 GB per copy. `selective_logprobs` instead walks the N*T rows in chunks, keeps only
[N*T] statistics (logprob, entropy, log-sum-exp) and recomputes each chunk's logits in
backward, so peak memory is O(chunk_size * V) regardless of N*T.

Also here: `causal_lm_hidden` / `lm_head_of`, which split a transformers causal LM (plain,
PEFT-wrapped or DeepSpeed-wrapped) into "decoder stack" and "output projection", so the
projection can go through the chunked path instead of the model's own `lm_head`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rlkit.modeling import unwrap_model

__all__ = [
    "selective_logprobs",
    "naive_logprobs",
    "causal_lm_hidden",
    "lm_head_of",
]


def _matmul_dtype(hidden: Tensor, weight: Tensor) -> torch.dtype:
    """dtype of the lm_head matmul: the autocast dtype when autocast is on (what the model's own
    lm_head would use), else the common dtype of hidden and weight (bf16 x bf16 stays bf16,
    with fp32 accumulation inside the matmul)."""
    dev = hidden.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return torch.promote_types(hidden.dtype, weight.dtype)


def _project(
    h: Tensor, weight: Tensor, bias: Tensor | None, temperature: float, dtype: torch.dtype
) -> Tensor:
    """Logits of rows `h` [C, H] as fp32 [C, V], divided by the sampling temperature.

    The matmul runs in `dtype`; everything after it is fp32 so the softmax statistics do not
    lose precision.
    """
    logits = torch.nn.functional.linear(
        h.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)
    ).float()  # [C, V]
    if temperature != 1.0:
        logits = logits / temperature
    return logits


def _entropy(logp_all: Tensor) -> Tensor:
    """H = -sum_v p_v log p_v from a log-softmax [C, V] -> [C]."""
    return -torch.linalg.vecdot(logp_all.exp(), logp_all)  # [C]


class _ChunkedLogprobs(torch.autograd.Function):
    """Chunked target logprob + entropy with recompute-in-backward.

    Saved for backward: hidden [M, H], weight/bias (already alive as parameters), targets [M],
    lse [M] and entropy [M]; no [M, V] tensor survives the forward.

    Backward per chunk, with z = logits / tau, p = softmax(z), logp = z - lse:
      d logp_target / dz = onehot(target) - p
      d H / dz          = -p * (logp + H)
    and dz / dlogits = 1 / tau; then grad_h = g @ W, grad_W = g^T h, grad_b = sum g.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_size, with_entropy, dtype):
        with torch.autocast(hidden.device.type, enabled=False):
            ctx.temperature, ctx.chunk_size, ctx.dtype = temperature, chunk_size, dtype
            return _ChunkedLogprobs._forward(
                ctx, hidden, weight, bias, targets, temperature, chunk_size, with_entropy, dtype
            )

    @staticmethod
    def _forward(ctx, hidden, weight, bias, targets, temperature, chunk_size, with_entropy, dtype):
        M = hidden.shape[0]
        logp = hidden.new_empty(M, dtype=torch.float32)  # [M]
        lse = hidden.new_empty(M, dtype=torch.float32)  # [M]
        ent = hidden.new_empty(M, dtype=torch.float32) if with_entropy else None  # [M]
        w = weight.to(dtype)  # cast once, not per chunk (no-op when dtypes agree)
        for s in range(0, M, chunk_size):
            e = min(s + chunk_size, M)
            z = _project(hidden[s:e], w, bias, temperature, dtype)  # [C, V]
            lse[s:e] = torch.logsumexp(z, -1)
            logp_all = z.sub_(lse[s:e, None])  # [C, V] log-softmax, in place
            logp[s:e] = logp_all.gather(-1, targets[s:e, None]).squeeze(-1)
            if with_entropy:
                ent[s:e] = _entropy(logp_all)
            del z, logp_all
        ctx.save_for_backward(hidden, weight, bias, targets, lse, ent)
        ctx.set_materialize_grads(False)
        return logp, ent

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        with torch.autocast(ctx.saved_tensors[0].device.type, enabled=False):
            return _ChunkedLogprobs._backward(ctx, g_logp, g_ent)

    @staticmethod
    def _backward(ctx, g_logp, g_ent):
        hidden, weight, bias, targets, lse, ent = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        tau, dtype = ctx.temperature, ctx.dtype
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = None
        if need_b:
            grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
        w = weight.to(dtype)
        for s in range(0, hidden.shape[0], ctx.chunk_size):
            e = min(s + ctx.chunk_size, hidden.shape[0])
            g = _chunk_grad_logits(
                _project(hidden[s:e], w, bias, tau, dtype), targets[s:e], lse[s:e],
                None if g_logp is None else g_logp[s:e],
                None if g_ent is None else g_ent[s:e],
                None if ent is None else ent[s:e],
                tau,
            )  # [C, V] fp32
            # matmuls in the forward's dtype (as autograd of a bf16 linear would), fp32 sums
            gd = g.to(dtype)
            if need_h:
                grad_h[s:e] = (gd @ w).to(hidden.dtype)  # [C, H]
            if need_w and dtype == torch.float32:
                grad_w.addmm_(gd.t(), hidden[s:e].float())  # [V, H], in place
            elif need_w:
                grad_w += (gd.t() @ hidden[s:e].to(dtype)).float()  # [V, H]
            if need_b:
                grad_b += g.sum(0)
            del g, gd
        if need_w:
            grad_w = grad_w.to(weight.dtype)
        if need_b:
            grad_b = grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None, None, None, None


def _chunk_grad_logits(z, targets, lse, g_logp, g_ent, ent, temperature) -> Tensor:
    """Gradient wrt the (pre-temperature) logits of one chunk, from fp32 z [C, V] (consumed).

    g = -p * (g_logp + g_ent * (logp + H)) + onehot(target) * g_logp, then / tau.
    Works in place so a chunk costs two [C, V] buffers (logp, p), not five.
    """
    logp_all = z.sub_(lse[:, None])  # [C, V]
    probs = logp_all.exp()  # [C, V]
    if g_ent is not None and ent is not None:
        g = logp_all.add_(ent[:, None]).mul_(g_ent[:, None])  # [C, V], reuses logp_all
        if g_logp is not None:
            g.add_(g_logp[:, None])
        g.mul_(probs).neg_()
        del probs
    else:
        g = probs.mul_(-g_logp[:, None])  # [C, V], reuses probs
    if g_logp is not None:
        g.scatter_add_(-1, targets[:, None], g_logp[:, None])
    # temperature: z = logits / tau  =>  dL/dlogits = dL/dz / tau
    return g.div_(temperature) if temperature != 1.0 else g


def selective_logprobs(
    hidden: Tensor,
    lm_head_weight: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    with_entropy: bool = True,
    lm_head_bias: Tensor | None = None,
    entropy_grad: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Per-token logprob of `targets` and entropy, without materialising [N, T, V] logits.

    Args:
        hidden: [N, T, H] final hidden states (after the last norm), any float dtype.
        lm_head_weight: [V, H] output projection (tied or not).
        targets: [N, T] long, the token whose logprob is wanted at each position.
        temperature: logits are divided by it before the softmax, so the logprobs are those
            of the distribution the engine sampled from.
        chunk_size: rows (of the flattened N*T) processed at a time; peak extra memory is
            about 3 * chunk_size * V * 4 bytes in forward and backward.
        with_entropy: also return the entropy of the full (tempered) distribution.
        lm_head_bias: optional [V] bias.
        entropy_grad: make the entropy differentiable (for an entropy bonus). Default False:
            entropy is returned detached, as a diagnostic.

    Returns:
        (logprobs [N, T] fp32, entropy [N, T] fp32 or None). Positions are not masked here.
    """
    N, T, H = hidden.shape
    logp, ent = _ChunkedLogprobs.apply(
        hidden.reshape(N * T, H), lm_head_weight, lm_head_bias, targets.reshape(N * T),
        float(temperature), int(chunk_size), bool(with_entropy),
        _matmul_dtype(hidden, lm_head_weight),
    )  # [N*T], [N*T]
    if ent is not None:
        ent = ent.view(N, T) if entropy_grad else ent.detach().view(N, T)
    return logp.view(N, T), ent


def naive_logprobs(
    hidden: Tensor,
    lm_head_weight: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    with_entropy: bool = True,
    lm_head_bias: Tensor | None = None,
    entropy_grad: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Reference for `selective_logprobs`: full [N, T, V] logits, plain autograd.

    `chunk_size` is accepted for signature compatibility and ignored.
    """
    del chunk_size
    N, T, H = hidden.shape
    h2 = hidden.reshape(N * T, H)
    z = _project(h2, lm_head_weight, lm_head_bias, temperature, _matmul_dtype(hidden, lm_head_weight))  # [N*T, V]
    logp_all = torch.log_softmax(z, -1)  # [N*T, V]
    logp = logp_all.gather(-1, targets.reshape(N * T, 1)).squeeze(-1).view(N, T)  # [N, T]
    ent = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            ent = _entropy(logp_all).view(N, T)  # [N, T]
        if not entropy_grad:
            ent = ent.detach()
    return logp, ent


def _base_model(model: nn.Module) -> nn.Module:
    """The transformers model: wrappers stripped (`rlkit.modeling.unwrap_model`), then PEFT's
    `get_base_model()` (LoRA layers stay injected in the base model, so they still act)."""
    model = unwrap_model(model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def causal_lm_hidden(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    position_ids: Tensor | None = None,
) -> Tensor:
    """Run only the decoder stack of a causal LM -> final hidden states [B, L, H].

    `attention_mask` may be 2D [B, L] (1 = real token) or a custom 4D boolean mask
    [B, 1, L, L] (True = may attend); transformers passes 4D masks through unchanged.
    Calling the decoder directly (not `model(...)`) skips the lm_head, whose [B, L, V] output
    is what `selective_logprobs` exists to avoid.
    """
    base = _base_model(model)
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else base.model
    out = decoder(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
    )
    return out.last_hidden_state  # [B, L, H]


def lm_head_of(model: nn.Module) -> tuple[Tensor, Tensor | None]:
    """(weight [V, H], bias [V] or None) of the output projection.

    With tied embeddings the returned weight *is* the input-embedding Parameter, so its
    gradient from `selective_logprobs` accumulates into the shared tensor as usual.
    """
    base = _base_model(model)
    cfg = getattr(base, "config", None)
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
        raise NotImplementedError(
            "models that rescale logits after the lm_head (softcapping / logit_scale) are not "
            "supported by the chunked logprob path"
        )
    head = base.get_output_embeddings()
    if hasattr(head, "base_layer") and hasattr(head, "lora_A"):
        raise NotImplementedError(
            "LoRA on the lm_head is not supported by the chunked path; leave lm_head out of "
            "LoRA target_modules (or put it in modules_to_save)"
        )
    return head.weight, getattr(head, "bias", None)
