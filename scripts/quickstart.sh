#!/usr/bin/env bash
# The README's first command: set up the environments (first run only), then run the demo:
# a local Label Studio with generated head-CT slices, the TSP backend connected, one
# active-learning cycle, and the reordered queue. Ctrl-C stops everything it started.
# Options go to `tsp-sync demo` (e.g. --count 30 --epochs 4 --no-serve); see --help.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup_env.sh
export TSP_LS_BIN="${TSP_LS_BIN:-$PWD/.venv-ls/bin/label-studio}"
exec .venv/bin/tsp-sync demo --root "${TSP_DEMO_DIR:-demo}" "$@"
