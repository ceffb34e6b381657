#!/usr/bin/env bash
# Regenerate postman/ from the OpenAPI document: ./scripts/postman.sh [output folder]
# (also `npm run postman`). tests/test_postman.py fails when the committed files are stale.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-postman}
python=.venv/bin/python
[ -x "$python" ] || python=python3
if [ ! -d node_modules/openapi-to-postmanv2 ]; then
  npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
fi
mkdir -p "$out"
document=$(mktemp)
trap 'rm -f "$document"' EXIT
"$python" -m openapi_doc >"$document"
node scripts/postman.js "$document" "$out"
