#!/usr/bin/env bash
# Installs the TypeScript agents' toolchain (agents/sdk-js: componentize-js,
# jco, TypeScript, esbuild) from its lockfile, with `npm ci`, when
# node_modules is missing or the lockfile changed since the last install.
# Idempotent and silent when there is nothing to do; needs only Node (20 or
# later) and npm, and a package registry.
#
#   scripts/toolchain_js.sh          # then: node agents/sdk-js/build.mjs ENTRY.ts OUT.wasm
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
sdk="$root/agents/sdk-js"
lock="$sdk/package-lock.json"
stamp="$sdk/node_modules/.concord-toolchain"

need() {
    echo "toolchain_js: $1" >&2
    exit 1
}

command -v node >/dev/null 2>&1 || need "node is not installed: install Node.js 20 or later (with npm)"
command -v npm >/dev/null 2>&1 || need "npm is not installed: install it with Node.js 20 or later"
major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$major" -ge 20 ] || need "node $(node --version) is too old: the toolchain needs Node.js 20 or later"
[ -f "$lock" ] || need "no lockfile at $lock"

# What the install depends on: the lockfile, and the node and npm versions.
want="$(
    cd "$sdk"
    node -e '
        const { createHash } = require("node:crypto");
        const { readFileSync } = require("node:fs");
        const h = createHash("sha256").update(readFileSync("package-lock.json"));
        console.log(`${h.digest("hex")} node-${process.versions.node.split(".")[0]}`);
    '
)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -d "$sdk/node_modules/@bytecodealliance/componentize-js" ]; then
    exit 0
fi

echo "toolchain_js: installing agents/sdk-js from its lockfile (npm ci)..." >&2
# Only esbuild has an install script, and it is only a fallback for a
# missing platform package (which the lockfile provides): skip scripts.
if ! (cd "$sdk" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2); then
    need "npm ci failed in $sdk (is a package registry reachable? see the npm output above)"
fi
echo "$want" >"$stamp"
echo "toolchain_js: ready ($(cd "$sdk" && node -p 'require("./node_modules/@bytecodealliance/componentize-js/package.json").version' 2>/dev/null | sed 's/^/componentize-js /'))" >&2
