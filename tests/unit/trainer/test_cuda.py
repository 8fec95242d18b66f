"""The trainer and HF-engine GPU path: rollout tensors live on the CPU, the model on CUDA.

Skipped without a GPU (CI has none); run on a GPU machine with
`python -m pytest -q tests/unit/trainer/test_cuda.py`.
"""

from __future__ import annotations

import copy

import pytest
import torch
from trainer_helpers import B, G, T, sgd_policy, tiny_batch, tiny_llama

from rlkit.algorithms.losses import build_loss
from rlkit.rollout.types import SamplingConfig
from rlkit.trainer.update import ForwardSettings, batch_logprobs, policy_update

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

@pytest.mark.parametrize("shared_prefix", [True, False])
def test_update_on_cuda_matches_cpu(shared_prefix):
    """CPU rollout batch + CUDA model: same update (fp32) and the same CPU-side outputs."""
    batch = tiny_batch(rewards=torch.tensor([1.0, 0, 0, 1, 0, 1, 0, 1]))
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 0.0, 1.0])
    old = torch.full((B * G, T), -5.0) * batch.completion_mask
    fs = ForwardSettings(temperature=0.7, chunk_size=7, pad_id=0, shared_prefix=shared_prefix, micro_batch_tokens=12,
                         gen_budget=T)
    deltas, results = [], []
    for device in ("cpu", "cuda"):
        model = tiny_llama().to(device)
        before = copy.deepcopy(model.state_dict())
        policy = sgd_policy(model)
        lp, ent = batch_logprobs(model, batch, fs, policy.autocast)
        assert lp.device.type == "cpu" and ent.device.type == "cpu"
        res = policy_update(policy, build_loss("grpo", tis_cap=2.0), batch, adv, old_logprobs=old, fs=fs,
                            num_iterations=1, mini_batches=2)
        assert res.first_logprobs.device.type == "cpu" and res.entropy.device.type == "cpu"
        results.append((lp, res))
        deltas.append({k: (model.state_dict()[k] - before[k]).cpu() for k in before})
    (lp_c, res_c), (lp_g, res_g) = results
    torch.testing.assert_close(lp_g, lp_c, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(res_g.first_logprobs, res_c.first_logprobs, rtol=1e-4, atol=1e-5)
    for k in res_c.metrics:
        assert res_g.metrics[k] == pytest.approx(res_c.metrics[k], rel=1e-3, abs=1e-5), k
    for name in deltas[0]:
        torch.testing.assert_close(deltas[1][name], deltas[0][name], rtol=1e-3, atol=1e-6, msg=name)


def test_hf_engine_runs_on_cuda(tiny_model_path):
    from rlkit.rollout.hf_engine import HFEngine

    engine = HFEngine(tiny_model_path, dtype="bfloat16", seed=0)
    assert engine.device.type == "cuda"
    assert next(engine.model.parameters()).device.type == "cuda"
    batch = engine.generate(["What is 1 + 2?", "What is 3 + 4?"], 3, SamplingConfig(max_new_tokens=6))
    assert batch.completion_ids.shape[0] == 6 and batch.completion_ids.device.type == "cpu"
    lp = batch.engine_logprobs[batch.completion_mask]
    assert torch.isfinite(lp).all() and (lp <= 0).all()
    # weights pushed from a CPU fp32 copy land on the engine's device and dtype
    src = {n: p.detach().float().cpu() + 0.01 for n, p in engine.model.named_parameters()}
    engine.update_weights(src.items())
    name, param = next(iter(engine.model.named_parameters()))
    assert param.device.type == "cuda" and param.dtype == torch.bfloat16
    torch.testing.assert_close(param.float().cpu(), src[name].to(torch.bfloat16).float())
    engine.close()
