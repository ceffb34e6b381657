#!/usr/bin/env bash
# Install everything the tests need (virtualenv, Python packages, Chromium, gcc, Node tools) and run the
# whole suite.
# Usage: ./scripts/test.sh [pytest arguments]
# Debian/Ubuntu packages that are missing (python3-venv, chromium, gcc, libc6-dev, postgresql,
# redis-server) are installed with apt-get, which needs root or sudo.
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
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt

# The end-to-end tests drive Debian's Chromium (Playwright cannot download browsers offline).
if [ ! -x /usr/bin/chromium ]; then
  apt_install chromium
fi
# The fake NVML is a small C library compiled by the tests: gcc, and libc6-dev for its headers
# and start files (gcc alone, installed without recommends, cannot link a shared library).
if ! echo 'int f(void) { return 0; }' | gcc -shared -fPIC -x c - -o /dev/null >/dev/null 2>&1; then
  apt_install gcc libc6-dev
fi

# The tests start their own throwaway PostgreSQL cluster and Redis (tests/servers.py) on 127.0.0.1;
# they need Debian's server binaries only, never the system services (nothing here starts them).
# PostgreSQL's sit in /usr/lib/postgresql/<version>/bin, not on PATH.
# Their maintainer scripts would start the services (and create a `main` cluster on 5432): a
# policy-rc.d that answers 101 ("action forbidden") stops that, unless one is there already
# (Docker images ship one).
apt_install_no_start() {
  if [ -e /usr/sbin/policy-rc.d ]; then apt_install "$@"; return; fi
  as_root sh -c 'printf "#!/bin/sh\nexit 101\n" >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d'
  local rc=0
  apt_install "$@" || rc=$?
  as_root rm -f /usr/sbin/policy-rc.d
  return "$rc"
}
servers=()
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || servers+=(postgresql)
[ -x /usr/bin/redis-server ] || servers+=(redis-server)
if [ "${#servers[@]}" -gt 0 ]; then
  apt_install_no_start "${servers[@]}"
fi

# Swagger UI's source, the Postman generator and Newman (tests/test_postman.py, the live lane)
# come from npm, pinned in package.json / package-lock.json.
if ! command -v npm >/dev/null 2>&1; then
  apt_install nodejs npm
fi
# Reinstall when node_modules is missing or older than the lock file. --ignore-scripts: nothing
# here needs an install script (and one of them, Swagger UI's analytics, would phone home).
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
fi

exec .venv/bin/python -m pytest "$@"
