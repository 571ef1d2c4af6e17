#!/usr/bin/env bash
# Builds a Python agent into a component of the `agent` world of wit/:
#
#   scripts/build_python_agent.sh AGENT_DIR OUT_WASM [MODULE]
#   scripts/build_python_agent.sh agents/support agents/support.wasm
#
# MODULE (default `app`) is the agent's module in AGENT_DIR (`app.py`); the
# SDK (agents/sdk-python, package `concord_agent`) is on its path, and the
# bindings (`wit_world`) are generated from wit/ by componentize-py as it
# builds: nothing generated is committed. Installs the toolchain first
# (scripts/toolchain_python.sh; silent when it is there already).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
    echo "usage: scripts/build_python_agent.sh AGENT_DIR OUT_WASM [MODULE]" >&2
    exit 2
}
[ $# -ge 2 ] && [ $# -le 3 ] || usage
agent_dir="$1"
given="$1"
out="$2"
module="${3:-app}"

fail() {
    echo "build_python_agent: $given: $1" >&2
    exit 1
}

[ -d "$agent_dir" ] || fail "no such folder"
agent_dir="$(cd "$agent_dir" && pwd)"
[ -f "$agent_dir/$module.py" ] || [ -f "$agent_dir/$module/__init__.py" ] ||
    fail "no module \`$module\` in it (expected $module.py)"

"$root/scripts/toolchain_python.sh"

out_dir="$(dirname "$out")"
mkdir -p "$out_dir"
out="$(cd "$out_dir" && pwd)/$(basename "$out")"
# Written beside the output and renamed over it, so that a host watching the
# folder never loads a half-written component, and a failed build leaves the
# last good one in place.
tmp="$out.tmp.$$"
log="$(mktemp)"
# The build runs on copies of the SDK and the agent: componentize-py's
# interpreter writes bytecode beside the sources it imports.
stage="$(mktemp -d)"
trap 'rm -rf "$tmp" "$log" "$stage"' EXIT
mkdir -p "$stage/sdk" "$stage/agent"
cp -R "$root/agents/sdk-python/concord_agent" "$stage/sdk/"
cp -R "$agent_dir/." "$stage/agent/"
find "$stage" -name __pycache__ -type d -prune -exec rm -rf {} +
# componentize-py adds a virtualenv's site-packages to the path (or, with
# none, the site-packages of whatever Python it finds): point it at an empty
# one, so that a component holds the SDK and the agent, and nothing that
# happens to be installed on the machine.
no_site="$root/target/toolchains/python/no-site"
mkdir -p "$no_site/lib/site-packages"
cd "$root"
if ! RUST_BACKTRACE=0 PYTHONDONTWRITEBYTECODE=1 VIRTUAL_ENV="$no_site" "$root/target/toolchains/python/bin/componentize-py" \
    -d "$root/wit" -w agent componentize \
    -p "$stage/sdk" -p "$stage/agent" \
    -o "$tmp" "$module" >"$log" 2>&1; then
    cat "$log" >&2
    if grep -q "has no attribute 'Handler'" "$log"; then
        fail "module \`$module\` defines no handler: decorate its handler with \`@handler\` (from concord_agent)"
    fi
    fail "componentize-py failed to build module \`$module\` (see its output above)"
fi
mv -f "$tmp" "$out"
