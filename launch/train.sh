#!/usr/bin/env bash
# The main job: set up (idempotent), fetch the embedded model, and run GRPO on the arithmetic
# task with SmolLM2-135M on CPU under accelerate + DeepSpeed ZeRO-2.
#   bash launch/train.sh [CONFIG] [a.b=c overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
CONFIG="${1:-recipes/configs/grpo_math_cpu.yaml}"
shift || true
.venv/bin/rlkit fetch-model smollm2-135m
exec .venv/bin/accelerate launch --config_file launch/accelerate/zero2_single.yaml \
  recipes/grpo_math.py --config "$CONFIG" "$@"
