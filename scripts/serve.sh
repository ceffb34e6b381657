#!/usr/bin/env bash
# Install the server's dependencies into .venv and run it in the foreground (Ctrl-C stops it).
# Configure with environment variables or a .env file in this folder (see .env.example).
# On Debian/Ubuntu without python3-venv, it is installed with apt-get (needs root or sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
# env inside: sudo drops DEBIAN_FRONTEND from the caller's environment.
apt_install() {
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

python=${PYTHON:-python3}
# A .venv without pip is what `python3 -m venv` leaves behind on Debian without python3-venv.
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  # Debian and Ubuntu ship venv's pip bootstrap (ensurepip) in python3-venv.
  if ! "$python" -c 'import ensurepip' >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    apt_install python3-venv
  fi
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
exec .venv/bin/python app.py
