#!/usr/bin/env bash
# The README's test command: set up the environments from scratch (or reuse them) and run every
# test, the Label Studio integration tests included. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup_env.sh
export TSP_LS_BIN="${TSP_LS_BIN:-$PWD/.venv-ls/bin/label-studio}"
exec .venv/bin/python -m pytest tests "$@"
