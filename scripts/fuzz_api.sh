#!/usr/bin/env bash
# Fuzzes the API of a real `concord serve` from its own OpenAPI document
# with schemathesis: no request may get a 5xx, and every answer must match
# the document. Usage: scripts/fuzz_api.sh MAX_EXAMPLES_PER_OPERATION
# (`just test` runs a short pass, `just fuzz-api` a long one).
#
# Needs target/debug/concord, Sales in target/wasm and Support and Product
# in target/agents (the `just` recipes and the e2e tests build them); installs schemathesis into target/venv on
# first use.
set -euo pipefail
cd "$(dirname "$0")/.."
examples="${1:-20}"
root="$PWD"
venv="$root/target/venv"
# A venv that does not run (moved with its target dir, say) is made anew.
if ! "$venv/bin/schemathesis" --version >/dev/null 2>&1; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'schemathesis>=4,<5'
fi

work="$(mktemp -d)"
server=""
cleanup() {
    if [ -n "$server" ]; then kill -TERM "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/agents"
cp target/wasm/wasm32-wasip2/release/sales.wasm target/agents/support.wasm target/agents/product.wasm "$work/agents/"
# The example config, with a small body limit (so the fuzzer meets 413s),
# the tests' cache of compiled components, and everything else as shipped.
{ sed "s|^\[agents\]\$|[agents]\ncache_dir = \"$root/target/concord-cache\"|" concord.toml
  printf '\n[server]\nmax_body_bytes = 65536\n'; } > "$work/concord.toml"
cd "$work"
# Some state to read: the Acme scenario.
"$root/target/debug/concord" run --script "$root/scenarios/acme.jsonl" > run.log 2>&1
"$root/target/debug/concord" serve --listen 127.0.0.1:0 > serve.log 2>&1 &
server=$!
for _ in $(seq 1 600); do
    [ -s data/concord.redb.server ] && break
    kill -0 "$server" 2>/dev/null || { cat serve.log; exit 1; }
    sleep 0.1
done
address="$(python3 -c 'import json,sys; print(json.load(open("data/concord.redb.server"))["address"])')"
echo "fuzzing http://$address ($examples examples per operation)"
status=0
"$venv/bin/schemathesis" run "http://$address/v1/openapi.json" \
    --checks not_a_server_error,response_schema_conformance,content_type_conformance \
    --max-examples "$examples" \
    --exclude-path-regex '(/stream$|^/v1/events$)' \
    --request-timeout 30 \
    --generation-database none \
    --no-color \
    --suppress-health-check all \
    --report-dir "$root/target/schemathesis" || status=$?
if grep -q "panicked" serve.log; then
    echo "concord serve panicked:"; grep -A5 panicked serve.log
    status=1
fi
exit $status
