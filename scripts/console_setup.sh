#!/usr/bin/env bash
# What the console's browser tests need (tests/e2e/console.rs):
# playwright-core from the committed lockfile, and Debian's Chromium.
set -euo pipefail
cd "$(dirname "$0")/../tests/console"

# npm ci again only when the lockfile changed since the last install.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error
fi

if [ -n "${CHROMIUM:-}" ]; then
    [ -x "$CHROMIUM" ] || { echo "CHROMIUM=$CHROMIUM is not an executable" >&2; exit 1; }
elif ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
    elif sudo -n true 2>/dev/null; then
        sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
    else
        echo "the console tests need Chromium: install Debian's (sudo apt-get install chromium), or set CHROMIUM to a Chromium binary" >&2
        exit 1
    fi
fi
