#!/usr/bin/env node
// Builds a TypeScript agent into a Concord component:
//
//   node agents/sdk-js/build.mjs AGENT_ENTRY.ts OUT_WASM
//
// 1. generates the declarations of the `agent` world from wit/ (jco),
// 2. type-checks the agent and the SDK (tsc, noEmit, strict),
// 3. bundles them into one ES module (esbuild; `concord:agent/*` stay
//    imports, which the component provides),
// 4. componentizes the bundle against wit/, world `agent` (componentize-js),
//    and writes OUT_WASM, creating its folder.
//
// The agent is named after OUT_WASM's file name, as the host names it
// (`product.wasm`, or `.product.wasm.componentize` while `concord build` stages it).
import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { generateTypes, sdkDir, witDir } from './scripts/types.mjs';

const usage = 'usage: node agents/sdk-js/build.mjs AGENT_ENTRY.ts OUT_WASM';

class BuildError extends Error {}

export async function buildAgent(entryArg, outArg) {
  const entry = resolve(entryArg);
  const out = resolve(outArg);
  // `product.wasm`, or a staging name such as `.product.wasm.componentize`.
  const name = basename(out).replace(/^\./, '').replace(/\.wasm(\..*)?$/, '') || basename(out);
  const near = (path) => {
    const rel = relative(process.cwd(), path);
    return rel && !rel.startsWith('..') ? rel : path;
  };
  const shown = near(entry);
  const failed = (step, detail) => new BuildError(`build of agent \`${name}\` (${shown}) failed at ${step}:\n${detail}`.trimEnd());
  if (!existsSync(entry)) throw failed('the start', `no such file: ${entry}`);
  if (!existsSync(join(sdkDir, 'node_modules', '@bytecodealliance', 'componentize-js'))) {
    throw failed('the start', `the toolchain is not installed: run scripts/toolchain_js.sh (npm ci in ${sdkDir})`);
  }
  const started = Date.now();

  try {
    await generateTypes();
  } catch (e) {
    throw failed(`generating the declarations from ${witDir}`, String(e?.message ?? e));
  }

  const work = await mkdtemp(join(tmpdir(), `concord-agent-${name}-`));
  try {
    // Type checking: the agent, and the SDK through its import.
    const tsconfig = join(work, 'tsconfig.json');
    await writeFile(
      tsconfig,
      JSON.stringify({ extends: join(sdkDir, 'tsconfig.agent.json'), files: [entry] }, null, 2),
    );
    const tsc = join(sdkDir, 'node_modules', 'typescript', 'bin', 'tsc');
    const check = spawnSync(process.execPath, [tsc, '-p', tsconfig, '--pretty', 'false'], {
      encoding: 'utf8',
      cwd: process.cwd(),
    });
    if (check.error) throw failed('type checking', String(check.error.message));
    if (check.status !== 0) throw failed('type checking', `${check.stdout}${check.stderr}`);

    // Bundling: one ES module with the SDK inside.
    const esbuild = await import('esbuild');
    const bundle = join(work, `${name}.js`);
    try {
      await esbuild.build({
        entryPoints: [entry],
        bundle: true,
        outfile: bundle,
        format: 'esm',
        platform: 'neutral',
        target: 'es2022',
        external: ['concord:*'],
        alias: { 'concord-agent': join(sdkDir, 'src', 'index.ts') },
        keepNames: true,
        legalComments: 'none',
        logLevel: 'silent',
      });
    } catch (e) {
      const messages = (e.errors ?? []).map((m) => `${m.location ? `${m.location.file}:${m.location.line}: ` : ''}${m.text}`);
      throw failed('bundling', messages.join('\n') || String(e.message));
    }

    // Componentizing: the bundle and the StarlingMonkey engine, against world `agent`.
    const { componentize } = await import('@bytecodealliance/componentize-js');
    let component;
    try {
      ({ component } = await componentize({ sourcePath: bundle, sourceName: `${name}.js`, witPath: witDir, worldName: 'agent' }));
    } catch (e) {
      throw failed('componentizing', String(e?.message ?? e));
    }
    await mkdir(dirname(out), { recursive: true });
    await writeFile(out, component);
    const mb = (component.length / (1024 * 1024)).toFixed(1);
    const s = ((Date.now() - started) / 1000).toFixed(1);
    console.log(`built agent \`${name}\`: ${near(out)} (${mb} MiB, ${s} s)`);
    return out;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  if (args.length !== 2 || args.some((a) => a.startsWith('-'))) {
    console.error(usage);
    process.exit(2);
  }
  buildAgent(args[0], args[1]).catch((e) => {
    console.error(e instanceof BuildError ? e.message : `build failed: ${e?.stack ?? e}`);
    process.exit(1);
  });
}
