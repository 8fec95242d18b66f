"""Weight sync to GPU vLLM servers over NCCL (`rollout.weight_transfer: nccl`).

`ServerEngine`'s default sync writes safetensors files the servers reload; this module is the
other path: vLLM's own weight-transfer API, the trainer broadcasting the tensors straight
into the servers' GPUs. Written against vLLM 0.32's API (`vllm/entrypoints/rl/online/
api_router.py`, `vllm/distributed/weight_transfer/`); this project's machines have no GPU,
so it has not run against a real server here (docs/rollout.md, "Weight sync over NCCL").

The trainer side is vLLM's `NCCLTrainerWeightTransferEngine` (built through
`WeightTransferTrainerFactory.trainer_init`): it opens the NCCL group as its rank 0, and each
sync it runs the round trip (start, update concurrently with the broadcast, finish). rlkit
supplies the two things that engine takes:

- a `VLLMWeightSyncClient` (`_ServersClient`) that speaks to every server at once over
  rlkit's HTTP (one URL per error, `ServerEngine`'s retries for the idempotent calls);
- a `WeightSource` (`_Tensors`) holding this sync's tensors.

What goes over HTTP, per server (all servers in parallel):

- Once, at construction: `GET /server_info` (a CUDA device, `--weight-transfer-config`
  with backend nccl), `GET /get_world_size` (its worker count W_i), then
  `POST /init_weight_transfer_engine` `{"init_info": {master_address, master_port,
  rank_offset, world_size, packed, packed_buffer_size_bytes, packed_num_buffers}}`:
  world_size = 1 (this trainer) + sum W_i, server i's workers at ranks
  1 + W_0 + ... + W_(i-1) onwards. The call blocks until every rank has joined, so it runs
  in a thread while the trainer opens its side (vLLM's engine does this).
- Per sync: `POST /pause?mode=wait` (in-flight requests finish, new ones wait: no request
  straddles two weight versions, and no forward runs while the layers are being reloaded),
  `POST /start_weight_update`, `POST /update_weights` `{"update_info": {names, dtype_names,
  shapes}}` concurrently with the broadcast (the HTTP call returns once the server has
  received every tensor), `POST /finish_weight_update`, `POST /reset_prefix_cache`,
  `POST /update_weight_version` `{"new_version": "<n>"}`, `POST /resume`. The cache reset and
  the version happen before the resume, so the first request after it sees new weights only,
  tagged with their version.
- At close: `POST /shutdown_weight_transfer_engine` (the server can join another trainer).
"""

from __future__ import annotations

import logging
import socket
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)

__all__ = ["NcclWeightTransfer", "route_address"]

# ServerEngine._call: (urls, path, body, *, what, retry) -> the parsed JSON answer
Call = Callable[..., Any]


def route_address(url: str) -> str:
    """The address of this machine's interface that routes to `url`'s host (what the server's
    workers dial to reach the trainer). A UDP connect sends nothing."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, kind, proto) as s:
        s.connect(addr)
        return str(s.getsockname()[0])


def _free_port(address: str) -> int:
    """A TCP port nothing listens on at `address` (IPv4 or IPv6); the OS picks it."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def _trainer_device() -> torch.device:
    """The CUDA device this trainer process broadcasts from (accelerate sets the current one)."""
    if not torch.cuda.is_available():
        raise RuntimeError("rollout.weight_transfer: nccl broadcasts from the trainer's GPU, and this trainer "
                           "process has no CUDA device; use rollout.weight_transfer: file")
    return torch.device("cuda", torch.cuda.current_device())


def _sources():
    """vLLM's `WeightSource` base (imported late: vLLM is imported only when this path is used)."""
    from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource

    class _Tensors(WeightSource):
        """This sync's `(name, tensor)` pairs; `metadata()` describes them without copying."""

        def __init__(self) -> None:
            self.pairs: list[tuple[str, Tensor]] = []

        def metadata(self) -> list[ParamMeta]:
            return [ParamMeta(name, t.dtype, tuple(t.shape)) for name, t in self.pairs]

        def __iter__(self) -> Iterator[tuple[str, Tensor]]:
            return iter(self.pairs)

    return _Tensors


class _ServersClient:
    """vLLM's `VLLMWeightSyncClient` protocol over several servers: each call goes to every
    server in parallel and returns when all have answered (the first error is raised, naming
    its server). `init_weight_transfer_engine` gives each server its own `rank_offset`."""

    def __init__(self, servers: Sequence[str], call: Call, rank_offsets: dict[str, int]) -> None:
        self.servers = list(servers)
        self.call = call
        self.rank_offsets = rank_offsets

    def each(self, path: str, body: Any = None, *, what: str, retry: bool = False) -> list[Any]:
        """POST to every server at once. `body` may be a function of the URL."""
        def one(url: str) -> Any:
            return self.call([url], path, body(url) if callable(body) else body, what=what, retry=retry)

        if len(self.servers) == 1:
            return [one(self.servers[0])]
        with ThreadPoolExecutor(max_workers=len(self.servers), thread_name_prefix="rlkit-nccl") as pool:
            futures = [pool.submit(one, url) for url in self.servers]
            return [f.result() for f in futures]

    # -- the protocol NCCLTrainerWeightTransferEngine drives ------------------------------

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self.each("/init_weight_transfer_engine",
                  lambda url: {"init_info": {**init_info, "rank_offset": self.rank_offsets[url]}},
                  what="init_weight_transfer_engine")

    def start_weight_update(self) -> None:
        self.each("/start_weight_update", what="start_weight_update")

    def update_weights(self, update_info: dict[str, Any] | list[dict[str, Any]]) -> None:
        self.each("/update_weights", {"update_info": update_info}, what="update_weights")

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        body = None if weight_version is None else {"weight_version": weight_version}
        self.each("/finish_weight_update", body, what="finish_weight_update")

    def shutdown_weight_transfer_engine(self) -> None:
        self.each("/shutdown_weight_transfer_engine", what="shutdown_weight_transfer_engine")


class NcclWeightTransfer:
    """The trainer's side of NCCL weight sync to `servers` (see the module docstring).

    Construction checks the servers, opens the NCCL group with all of them (blocking until
    every worker has joined) and must run on the one trainer rank that pushes weights.

    Args:
        servers: the servers' base URLs (already health-checked by `ServerEngine`).
        call: `ServerEngine._call` (HTTP POST with retries and errors naming the server).
        get: `ServerEngine._get` (HTTP GET, errors naming the server).
        master_address: the address the servers' workers reach the trainer at; default the
            address of the interface that routes to the first server.
        master_port: the trainer's rendezvous TCP port; default a free one.
        error: the exception type raised for a server that cannot take NCCL transfers.
    """

    def __init__(self, servers: Sequence[str], call: Call, get: Callable[[str, str], Any], *,
                 master_address: str | None = None, master_port: int | None = None,
                 error: type[Exception] = RuntimeError) -> None:
        from vllm.distributed.weight_transfer import WeightTransferTrainerFactory
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

        self.servers = list(servers)
        self.error = error
        self.device = _trainer_device()
        sizes = {}
        for url in self.servers:
            self._check_server(url, get, error)
            sizes[url] = int((get(url, "/get_world_size") or {}).get("world_size", 1))
        offsets, rank = {}, 1  # the trainer is rank 0
        for url in self.servers:
            offsets[url], rank = rank, rank + sizes[url]
        self.world_size = rank
        self.master_address = master_address or route_address(self.servers[0])
        self.master_port = int(master_port or _free_port(self.master_address))
        self.client = _ServersClient(self.servers, call, offsets)
        self.source = _sources()()
        log.info("NCCL weight transfer: trainer at %s:%d, world size %d (%s)", self.master_address,
                 self.master_port, self.world_size, ", ".join(f"{u}: {sizes[u]} worker(s)" for u in self.servers))
        # vLLM's trainer engine: sends the workers' init info in a thread and opens rank 0 meanwhile
        self.engine = WeightTransferTrainerFactory.trainer_init(
            NCCLTrainerInitInfo(master_address=self.master_address, master_port=self.master_port,
                                world_size=self.world_size, rank=0),
            client=self.client, source=self.source)

    @staticmethod
    def _check_server(url: str, get: Callable[[str, str], Any], error: type[Exception]) -> None:
        cfg = (get(url, "/server_info?config_format=json") or {}).get("vllm_config") or {}
        if not isinstance(cfg, dict):
            return  # a text config: nothing to check, the init call says what is wrong
        dev_cfg = cfg.get("device_config") or {}
        device = str(dev_cfg.get("device_type") or dev_cfg.get("device") or "")  # "device": None on some platforms
        if device and "cuda" not in device:
            raise error(f"vLLM server {url} runs on {device}; rollout.weight_transfer: nccl needs GPU servers "
                        "(use rollout.weight_transfer: file)")
        if "weight_transfer_config" in cfg:
            backend = (cfg.get("weight_transfer_config") or {}).get("backend")
            if backend != "nccl":
                have = f"weight transfer backend {backend}" if backend else "no weight transfer configured"
                raise error(f"vLLM server {url} has {have}; rollout.weight_transfer: nccl needs it started with "
                            "--weight-transfer-config '{\"backend\": \"nccl\"}' (rlkit serve MODEL -- "
                            "--weight-transfer-config '{\"backend\": \"nccl\"}')")

    def push(self, named_tensors: Iterable[tuple[str, Tensor]], version: int, dtype: torch.dtype | None) -> None:
        """Broadcast the weights (floating tensors cast to `dtype`) into every server and tag
        them `version`. The iterator is consumed first (under ZeRO-3 it gathers); the tensors
        are held on the trainer's GPU for the broadcast (views where no cast or move is needed)."""
        pairs = []
        for name, t in named_tensors:
            t = t.detach()
            if t.is_floating_point() and dtype is not None and t.dtype != dtype:
                t = t.to(dtype)
            pairs.append((name, t.to(self.device)))
        self.source.pairs = pairs
        each = self.client.each
        try:
            each("/pause?mode=wait", what="pause", retry=True)
            try:
                self.engine.send_weights()  # start_weight_update, update_weights || broadcast, finish_weight_update
            except Exception as exc:
                raise self.error(f"NCCL weight sync v{version} failed ({exc}); the servers are paused in the middle "
                                 "of a weight update and the NCCL group is unusable: restart them") from exc
            for url, ok in zip(self.servers, each("/reset_prefix_cache", what="reset_prefix_cache", retry=True),
                               strict=True):
                if not (ok or {}).get("success", True):
                    raise self.error(f"vLLM server {url}: /reset_prefix_cache answered success=false while paused")
            each("/update_weight_version", {"new_version": str(version)}, what="update_weight_version", retry=True)
            each("/resume", what="resume", retry=True)
        finally:
            self.source.pairs = []

    def close(self) -> None:
        """Leave the NCCL group on both sides (best effort: the servers keep running)."""
        try:
            self.client.shutdown_weight_transfer_engine()
        except Exception as exc:  # noqa: BLE001 - closing: say so and go on
            log.warning("NCCL weight transfer: shutdown on the servers failed (%s)", exc)
        self.engine.shutdown()
