#!/usr/bin/env bash
# Install the server's dependencies into .venv and run it in the foreground (Ctrl-C stops it).
# Configure with environment variables or a .env file in this folder (see .env.example).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
exec .venv/bin/python app.py
