#!/usr/bin/env bash
# schemathesis against the served /openapi.json of the local stack scripts/conformance started
# (LOCAL_STACK_DATA, LOCAL_STACK_BIN, VENV), configured by tests/contract/schemathesis.toml.
set -euo pipefail
cd "$(dirname "$0")/../.."
api=$("$VENV/bin/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["api_url"])' "$LOCAL_STACK_DATA/stack.json")
export API_TOKEN
API_TOKEN=$("$LOCAL_STACK_BIN" token "schemathesis-$RANDOM" --data-dir "$LOCAL_STACK_DATA")
export OPERATOR_KEY="${OPERATOR_KEY:-local-operator-key}"
# What schemathesis cannot make up (tests/contract/fixtures.py).
while IFS='=' read -r name value; do export "$name=$value"; done \
    < <("$VENV/bin/python" tests/contract/fixtures.py "$api" "$API_TOKEN")
[ -n "${MEDIA_ID:-}" ] || { echo "conformance: fixtures failed"; exit 1; }
export REPORT_DIR="$PWD/target/conformance/schemathesis"
mkdir -p "$REPORT_DIR"
st() { "$VENV/bin/st" --config-file tests/contract/schemathesis.toml run "$api/openapi.json" --no-color "$@"; }
# Deleting the account ends the token's use: that operation runs last, on its own.
st --exclude-operation-id deleteMe
st --include-operation-id deleteMe
