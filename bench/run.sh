#!/bin/sh
# Run every benchmark (~10 minutes) and rewrite BENCHMARKS.md. Installs wrk, nginx, redis-server and
# PostgreSQL with apt-get when missing (needs root). Pass --only SECTIONS or --report through to
# `python -m bench`.
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -c "import socketio, websocket" 2>/dev/null || "$PY" -m pip install -q -r requirements-dev.txt
exec "$PY" -m bench "$@"
