#!/usr/bin/env bash
# Create (or reuse) the project's virtualenvs. Idempotent: a second run installs nothing new.
#   .venv     the project: torch 2.14.1 + torchvision 0.29.1, tsp-al with its backend and dev extras
#   .venv-ls  Label Studio 1.23.2, kept apart: it pins its own Django stack and label-studio-sdk
#   PostgreSQL from the distribution's packages (Debian), if missing: the tests run Label Studio
#             on a throwaway cluster with the settings of docker-compose.yml (tests/pg_fixtures.py)
# Set TSP_SKIP_LS=1 to skip the Label Studio environment (and PostgreSQL).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  echo "==> installing torch 2.14.1 + torchvision 0.29.1 (about 2 minutes)"
  .venv/bin/pip install --progress-bar off -q torch==2.14.1 torchvision==0.29.1
fi
# Older checkouts installed label-studio-ml 1.0.9, which pins Flask 1.1.2 / Werkzeug 2.0.2 (known
# advisories) and is no longer used: take it and its redis/rq helpers out of the environment.
for old in label-studio-ml rq redis; do
  if .venv/bin/pip show -q "$old" >/dev/null 2>&1; then
    echo "==> removing $old (no longer a dependency)"
    .venv/bin/pip uninstall -q -y "$old"
  fi
done
echo "==> installing tsp-al (editable) with backend and dev extras"
.venv/bin/pip install --progress-bar off -q -e '.[backend,dev]'

if [ "${TSP_SKIP_LS:-0}" != "1" ]; then
  if [ ! -x .venv-ls/bin/label-studio ]; then
    echo "==> installing Label Studio 1.23.2 into .venv-ls (about 2 minutes)"
    "$PY" -m venv .venv-ls
    .venv-ls/bin/pip install --progress-bar off -q label-studio==1.23.2
  fi
fi
if [ "${TSP_SKIP_LS:-0}" != "1" ]; then
  if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
      echo "==> installing PostgreSQL from the distribution's packages"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null; }
    else
      echo "==> PostgreSQL not found (initdb): install your distribution's postgresql package for the PostgreSQL test"
    fi
  fi
fi
echo "==> environments ready"
