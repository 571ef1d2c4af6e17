#!/usr/bin/env bash
# The tests of a TypeScript agent (AGENT_DIR/index.test.ts, as `concord new
# NAME --lang typescript` makes it), with node's test runner:
#
# 1. installs the toolchain (scripts/toolchain_js.sh; silent when there),
# 2. generates the declarations of the `agent` world from wit/,
# 3. type-checks the agent (tsc -p AGENT_DIR/tsconfig.json, strict),
# 4. bundles AGENT_DIR/index.test.ts with esbuild, `concord-agent` being the
#    SDK (agents/sdk-js/src) and `concord:agent/*` the stand-in host of
#    agents/sdk-js/test/stubs/ (as the SDK's own tests), into a temporary
#    folder,
# 5. runs the bundle with `node --test`.
#
#   scripts/test_js_agent.sh AGENT_DIR      # e.g. agents/notes; from any folder
set -euo pipefail

usage="usage: scripts/test_js_agent.sh AGENT_DIR   (a TypeScript agent's folder, e.g. agents/notes)"
[ $# -eq 1 ] && [ "${1#-}" = "$1" ] || { echo "$usage" >&2; exit 2; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
sdk="$root/agents/sdk-js"
[ -d "$1" ] || { echo "test_js_agent: no such folder: $1" >&2; exit 2; }
dir="$(cd "$1" && pwd)"
name="$(basename "$dir")"

failed() {
    echo "test_js_agent: agent \`$name\` ($1): $2" >&2
    exit 1
}

[ -f "$dir/index.ts" ] || failed "$dir" "no index.ts: not a TypeScript agent's folder"
[ -f "$dir/index.test.ts" ] || failed "$dir" "no index.test.ts to run"
[ -f "$dir/tsconfig.json" ] || failed "$dir" "no tsconfig.json (it extends ../sdk-js/tsconfig.agent.json)"

"$root/scripts/toolchain_js.sh" || failed "$dir" "the toolchain is not installed (scripts/toolchain_js.sh failed)"

node "$sdk/scripts/types.mjs" || failed "$dir" "generating the declarations from $root/wit failed"

if ! node "$sdk/node_modules/typescript/bin/tsc" -p "$dir/tsconfig.json" --pretty false; then
    failed "$dir" "it does not type-check (tsc -p $dir/tsconfig.json, above)"
fi

out="$(mktemp -d "${TMPDIR:-/tmp}/concord-test-$name-XXXXXX")"
trap 'rm -rf "$out"' EXIT

# Bundling: esbuild from the SDK's toolchain, resolved from there.
if ! node --input-type=module - "$sdk" "$dir" "$out/index.test.mjs" <<'JS'; then
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
const [sdk, dir, outfile] = process.argv.slice(2);
const esbuild = await import(pathToFileURL(createRequire(join(sdk, 'package.json')).resolve('esbuild')).href);
const stubs = join(sdk, 'test', 'stubs');
try {
  await esbuild.build({
    entryPoints: [join(dir, 'index.test.ts')],
    bundle: true,
    outfile,
    format: 'esm',
    platform: 'node',
    target: 'es2022',
    sourcemap: 'inline',
    keepNames: true,
    logLevel: 'silent',
    alias: { 'concord-agent': join(sdk, 'src', 'index.ts') },
    plugins: [
      {
        name: 'concord-host-stubs',
        setup(build) {
          // `concord:agent/kb@0.1.0` (the SDK's imports) and `concord:agent/host` (the stand-in's controls).
          build.onResolve({ filter: /^concord:agent\// }, (args) => {
            const iface = /^concord:agent\/([a-z-]+)(@[^/]*)?$/.exec(args.path)?.[1];
            const path = iface && join(stubs, `${iface}.mjs`);
            if (!path || !existsSync(path)) return { errors: [{ text: `no stand-in for \`${args.path}\` in ${stubs}` }] };
            return { path };
          });
        },
      },
    ],
  });
} catch (e) {
  for (const m of e.errors ?? [{ text: String(e?.message ?? e) }]) {
    console.error(`${m.location ? `${m.location.file}:${m.location.line}:${m.location.column}: ` : ''}${m.text}`);
  }
  process.exit(1);
}
JS
    failed "$dir" "bundling index.test.ts failed (above)"
fi

cd "$dir"
if ! node --enable-source-maps --test --test-reporter=spec "$out/index.test.mjs"; then
    failed "$dir" "its tests failed (above)"
fi
