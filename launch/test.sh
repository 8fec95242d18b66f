#!/usr/bin/env bash
# The test command: set up the environment (idempotent), fetch the embedded model once,
# then run the whole suite. Extra arguments go to pytest (e.g. `-k config`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
export PYTHONHASHSEED=0
.venv/bin/rlkit fetch-model smollm2-135m
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
exit $rc
