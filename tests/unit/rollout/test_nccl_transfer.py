"""`rollout.weight_transfer: nccl` without a GPU (rlkit/rollout/nccl_transfer.py).

NCCL cannot run here, so:
- the HTTP side runs against the stand-in server of test_server_engine_http.py (its `fakes`
  fixture) with vLLM's weight-transfer routes added, and vLLM's own trainer engine
  (`NCCLTrainerWeightTransferEngine`) drives the round trip; only its two NCCL calls (opening
  rank 0, the packed broadcast) are replaced by a recording fake. The fake and the stand-in
  servers meet at a barrier, as NCCL ranks do, so a call that should run concurrently with the
  broadcast (or the rendezvous) but does not fails the test instead of passing by accident;
- every JSON body rlkit sent is replayed through vLLM's own RL router (FastAPI: its request
  models and query parsing) into vLLM's worker-side parsers (`NCCLWeightTransferEngine`), so
  a schema change in vLLM fails here.
"""

from __future__ import annotations

import threading

import pytest
import torch
from test_server_engine_http import NAME, FakeVLLM, engine, fakes  # noqa: F401 - fakes is a fixture

from rlkit.rollout import nccl_transfer
from rlkit.rollout.server_engine import ServerError

SYNC = ["/pause?mode=wait", "/start_weight_update", "/update_weights", "/finish_weight_update",
        "/reset_prefix_cache", "/update_weight_version", "/resume"]
RL_POSTS = ("/pause", "/resume", "/init_weight_transfer_engine", "/start_weight_update", "/update_weights",
            "/finish_weight_update", "/update_weight_version", "/shutdown_weight_transfer_engine")


class FakeNCCL:
    """vLLM's trainer-side NCCL calls, replaced: `open` (rank 0 joins the group) and
    `broadcast` (the packed producer) wait at `barrier` with every server's worker, as NCCL
    would, and record what they were given."""

    def __init__(self, servers: int, timeout: float = 10.0) -> None:
        self.barrier = threading.Barrier(servers + 1, timeout=timeout)
        self.opened: list[object] = []
        self.sent: list[list[tuple[str, torch.Tensor]]] = []
        self.destroyed = 0

    def open(self, init_info):
        self.opened.append(init_info)
        self.barrier.wait()  # every server's workers have joined
        return self

    def destroy(self) -> None:
        self.destroyed += 1

    def broadcast(self, iterator, group, src, post_iter_func, buffer_size_bytes, num_buffers):
        assert group is self and src == 0
        self.barrier.wait()  # every server is inside POST /update_weights
        self.sent.append([(name, post_iter_func((name, t)).clone()) for name, t in iterator])
        self.barrier.wait()  # ... and answers it only once everything has been received

    def server_routes(self, fake: FakeVLLM, world_size: int, *, device: str = "cuda",
                      backend: str | None = "nccl") -> None:
        """vLLM's weight-transfer routes on a stand-in server, answered as vLLM 0.32 answers."""
        def ok(message):
            return lambda body: (200, message)

        def joined(body):
            self.barrier.wait()  # the init call returns once the group is complete
            return 200, {"message": "Weight transfer initialized"}

        def received(body):
            self.barrier.wait()
            self.barrier.wait()
            return 200, {"message": "Weights updated"}

        fake.routes.update({
            "/server_info": lambda body: (200, {"vllm_config": {
                "model_config": {"logprobs_mode": "processed_logprobs", "dtype": "torch.bfloat16"},
                "device_config": {"device": device},
                "weight_transfer_config": None if backend is None else {"backend": backend}}}),
            "/get_world_size": lambda body: (200, {"world_size": world_size}),
            "/pause": ok({"status": "paused"}),
            "/resume": ok({"status": "resumed"}),
            "/init_weight_transfer_engine": joined,
            "/start_weight_update": ok({"message": "Weight update started"}),
            "/update_weights": received,
            "/finish_weight_update": ok({"message": "Weight update finished"}),
            "/shutdown_weight_transfer_engine": ok({"message": "Weight transfer shut down"}),
        })


@pytest.fixture
def nccl(monkeypatch):
    """Install the fake: vLLM's NCCL engine module opens and broadcasts through it; the
    trainer 'device' is the CPU."""
    from vllm.distributed.weight_transfer import nccl_engine

    made: list[FakeNCCL] = []

    def make(servers: int, **kw) -> FakeNCCL:
        made.append(FakeNCCL(servers, **kw))
        monkeypatch.setattr(nccl_engine, "open_trainer_endpoint", made[-1].open)
        monkeypatch.setattr(nccl_engine, "packed_nccl_broadcast_producer", made[-1].broadcast)
        monkeypatch.setattr(nccl_transfer, "_trainer_device", lambda: torch.device("cpu"))
        return made[-1]

    yield make
    for f in made:
        f.barrier.abort()  # a test that failed half-way leaves no handler waiting


def rl_posts(fake: FakeVLLM) -> list[tuple[str, object]]:
    return [(p, b) for m, p, b in fake.calls
            if m == "POST" and p.split("?")[0] in (*RL_POSTS, "/reset_prefix_cache")]


def two_syncs(tiny_model_path, tmp_path, fakes, nccl):  # noqa: F811 - fakes is the fixture's value
    """Two servers (2 workers and 1), two syncs, close; returns (servers, fake NCCL)."""
    a, b = fakes(), fakes()
    net = nccl(2)
    net.server_routes(a, 2)
    net.server_routes(b, 1)
    eng = engine(tiny_model_path, [a.url, b.url], tmp_path, weight_transfer="nccl")
    for v in (1, 2):
        eng.update_weights([("model.w", torch.full((2, 3), float(v), dtype=torch.float64)),
                            ("model.step", torch.tensor([v]))])
        assert eng.weight_version == v and eng.sync_count == v
    assert eng.generate(["p"], 1, _sampling()).weight_version == 2
    eng.close()
    return (a, b), net


def _sampling():
    from rlkit.rollout.types import SamplingConfig

    return SamplingConfig(max_new_tokens=3)


def test_the_http_sequence_and_the_broadcast(tiny_model_path, tmp_path, fakes, nccl):  # noqa: F811
    (a, b), net = two_syncs(tiny_model_path, tmp_path, fakes, nccl)
    # the group: trainer rank 0, a's 2 workers at 1-2, b's worker at 3; rendezvous on this machine
    (opened,) = net.opened
    assert (opened.world_size, opened.master_address, opened.rank) == (4, "127.0.0.1", 0)
    for fake, offset in ((a, 1), (b, 3)):
        posts = rl_posts(fake)
        paths = [p for p, _ in posts]
        assert paths == ["/init_weight_transfer_engine", *SYNC, *SYNC, "/shutdown_weight_transfer_engine"]
        init = posts[0][1]["init_info"]
        assert init["rank_offset"] == offset and init["world_size"] == 4 and init["packed"] is True
        assert (init["master_address"], init["master_port"]) == (opened.master_address, opened.master_port)
        update = posts[3][1]["update_info"]
        assert update == {"names": ["model.w", "model.step"], "dtype_names": ["bfloat16", "int64"],
                          "shapes": [[2, 3], [1]]}
        assert [body for p, body in posts if p == "/update_weight_version"] == [{"new_version": "1"},
                                                                               {"new_version": "2"}]
        assert fake.version == "2"
        rpcs = [body["method"] for body in fake.posts("/collective_rpc")]
        assert rpcs == ["rlkit_extension_version"]  # the health check's ping; no file reload on this path
    # what went over the wire: the served dtype (bf16) for floats, integers untouched
    assert [[n for n, _ in sent] for sent in net.sent] == [["model.w", "model.step"]] * 2
    for v, sent in enumerate(net.sent, 1):
        w, step = sent[0][1], sent[1][1]
        assert w.dtype == torch.bfloat16 and torch.equal(w, torch.full((2, 3), float(v), dtype=torch.bfloat16))
        assert step.dtype == torch.int64 and step.tolist() == [v]
    assert net.destroyed == 1
    assert not list((tmp_path / "w").glob("v*"))  # no weight files either


def test_every_body_is_what_vllms_routes_and_workers_parse(tiny_model_path, tmp_path, fakes, nccl):  # noqa: F811
    """Replays every weight-transfer request rlkit sent through vLLM 0.32's own RL router into
    its NCCL worker engine's parsers; also reads /get_world_size's answer as vLLM writes it."""
    from types import SimpleNamespace

    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferEngine
    from vllm.entrypoints.rl.online.api_router import router

    (a, b), _ = two_syncs(tiny_model_path, tmp_path, fakes, nccl)
    worker = NCCLWeightTransferEngine.__new__(NCCLWeightTransferEngine)  # only its parsers are used
    seen: list[tuple[str, object]] = []

    class EngineClient:  # what the routes hand on to the engine, parsed as a GPU worker parses it
        vllm_config = SimpleNamespace(parallel_config=SimpleNamespace(world_size_across_dp=2, world_size=2))

        async def pause_generation(self, *, mode, clear_cache):
            seen.append(("pause", mode))

        async def resume_generation(self):
            seen.append(("resume", None))

        async def init_weight_transfer_engine(self, request):
            seen.append(("init", worker.parse_init_info(request.init_info)))

        async def start_weight_update(self):
            seen.append(("start", None))

        async def update_weights(self, request):
            info = worker.parse_update_info(request.update_info)
            assert all(isinstance(getattr(torch, d), torch.dtype) for d in info.dtype_names)
            seen.append(("update", info))

        async def finish_weight_update(self, weight_version=None):
            seen.append(("finish", weight_version))

        async def update_weight_version(self, new_version):
            seen.append(("version", new_version))

        async def shutdown_weight_transfer_engine(self):
            seen.append(("shutdown", None))

    app = FastAPI()
    app.include_router(router)
    app.state.engine_client = EngineClient()
    routes = {r.path for r in router.routes}
    with TestClient(app) as client:
        for fake in (a, b):
            for path, body in rl_posts(fake):
                if path.split("?")[0] not in routes:  # /reset_prefix_cache: vLLM's dev router, no body
                    assert path == "/reset_prefix_cache" and body is None
                    continue
                answer = client.post(path) if body is None else client.post(path, json=body)
                assert answer.status_code == 200, (path, body, answer.text)
        assert client.get("/get_world_size").json() == {"world_size": 2}  # the field rlkit reads
    kinds = [k for k, _ in seen]
    assert kinds.count("init") == 2 and kinds.count("update") == 4 and kinds.count("shutdown") == 2
    assert {m for k, m in seen if k == "pause"} == {"wait"}
    inits = [i for k, i in seen if k == "init"]
    assert [i.rank_offset for i in inits] == [1, 3] and {i.world_size for i in inits} == {4}
    assert all(i.packed and i.master_port > 0 and i.nccl_unique_id_b64 is None for i in inits)


@pytest.mark.parametrize("kw, fragment", [
    (dict(device="cpu"), "runs on cpu; rollout.weight_transfer: nccl needs GPU servers"),
    (dict(backend=None), "no weight transfer configured; rollout.weight_transfer: nccl needs it started with "
                         "--weight-transfer-config '{\"backend\": \"nccl\"}'"),
])
def test_a_server_that_cannot_take_nccl_is_refused(tiny_model_path, tmp_path, fakes, nccl, kw, fragment):  # noqa: F811
    fake = fakes()
    nccl(1).server_routes(fake, 1, **kw)
    with pytest.raises(ServerError, match=fake.url) as info:
        engine(tiny_model_path, [fake.url], tmp_path, weight_transfer="nccl")
    assert fragment in str(info.value)
    assert not rl_posts(fake)  # refused before any weight-transfer call


def test_a_trainer_without_a_gpu_is_refused(tiny_model_path, tmp_path, fakes, monkeypatch):  # noqa: F811
    fake = fakes()
    FakeNCCL(1).server_routes(fake, 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA device; use rollout.weight_transfer: file"):
        engine(tiny_model_path, [fake.url], tmp_path, weight_transfer="nccl")


def test_a_failed_update_stops_with_the_server_named(tiny_model_path, tmp_path, fakes, nccl):  # noqa: F811
    fake = fakes()
    net = nccl(1)
    net.server_routes(fake, 1)
    eng = engine(tiny_model_path, [fake.url], tmp_path, weight_transfer="nccl")
    fake.routes["/start_weight_update"] = lambda body: (500, {"error": "start_weight_update called while a "
                                                                      "weight update is already active"})
    with pytest.raises(ServerError, match=f"NCCL weight sync v1 failed .*{fake.url}.*restart them"):
        eng.update_weights([("model.w", torch.zeros(2))])
    assert eng.weight_version == 0 and not net.sent
    assert [p for p, _ in rl_posts(fake)][-2:] == ["/pause?mode=wait", "/start_weight_update"]  # no retry
    eng.close()


def test_only_the_sync_leader_joins_the_group(tiny_model_path, tmp_path, fakes, nccl):  # noqa: F811
    fake = fakes()
    net = nccl(1)
    net.server_routes(fake, 1)
    eng = engine(tiny_model_path, [fake.url], tmp_path, weight_transfer="nccl", sync_leader=False)
    consumed = []
    eng.update_weights(consumed.append(n) or (n, torch.zeros(1)) for n in ("a", "b"))
    assert consumed == ["a", "b"] and eng.weight_version == 1
    eng.close()
    assert not rl_posts(fake) and not net.opened


def test_weight_transfer_is_file_or_nccl(tiny_model_path, tmp_path, fakes):  # noqa: F811
    fake = fakes()
    with pytest.raises(ValueError, match="weight_transfer must be 'file' or 'nccl', got 'ipc'"):
        engine(tiny_model_path, [fake.url], tmp_path, weight_transfer="ipc")
