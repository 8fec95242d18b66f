"""Worker-side methods rlkit adds to a vLLM server (`--worker-extension-cls`).

vLLM mixes this class into its worker class, so its methods can be called by name through the
dev-mode `POST /collective_rpc` route (`{"method": "rlkit_reload_weights", ...}`). It exists
for one fix-up that plain `reload_weights` misses: with tied input/output embeddings on CPU,
the lm_head keeps a prepacked copy of the *old* embedding matrix after a reload, so the
server would sample from new hidden states through the old output projection (see
`rlkit.rollout.vllm_engine._refresh_tied_lm_head`, the same fix for the in-process engine).

`rlkit serve` starts servers with this extension; a server started with plain `vllm serve`
needs `--worker-extension-cls rlkit.rollout.server_worker.WorkerExtension` (and rlkit
importable in its Python) when it serves a tied-embedding model on CPU. This module is
imported inside the vLLM worker process: it imports nothing heavy at module level.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EXTENSION", "EXTENSION_VERSION", "WorkerExtension"]

EXTENSION = "rlkit.rollout.server_worker.WorkerExtension"
EXTENSION_VERSION = "1"


class WorkerExtension:
    """Mixed into the vLLM worker class; `self` is the worker. Names are prefixed `rlkit_`
    because vLLM refuses an extension attribute the worker class already has."""

    def rlkit_extension_version(self) -> str:
        """Ping: the server runs rlkit's extension (ServerEngine asks at its health check)."""
        return EXTENSION_VERSION

    def rlkit_reload_weights(self, weights_path: str) -> str:
        """`reload_weights(weights_path=...)`, then re-tie and re-process a tied lm_head.

        `weights_path` is a directory holding `*.safetensors` in checkpoint (HF) names; vLLM's
        default loader reads every safetensors file there. Returns what the fix-up did."""
        from rlkit.rollout.vllm_engine import _refresh_tied_lm_head

        self.reload_weights(weights_path=weights_path)
        worker: Any = self
        return _refresh_tied_lm_head(worker)
