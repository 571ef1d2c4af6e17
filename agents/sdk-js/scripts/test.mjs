// `npm test`: the SDK's tests. Generates the declarations from wit/,
// type-checks the SDK, compiles it with esbuild (into node_modules/.cache) with
// the `concord:agent/*` imports pointing at test/stubs/ (a stand-in host),
// then runs test/*.test.mjs with node's test runner.
import { spawnSync } from 'node:child_process';
import { mkdir, readdir, rm } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { generateTypes, sdkDir } from './types.mjs';

await generateTypes();
const tsc = join(sdkDir, 'node_modules', 'typescript', 'bin', 'tsc');
const check = spawnSync(process.execPath, [tsc, '-p', join(sdkDir, 'tsconfig.json'), '--pretty', 'false'], { stdio: 'inherit' });
if (check.status !== 0) {
  console.error('sdk-js: the SDK does not type-check');
  process.exit(1);
}

// Under node_modules/.cache: a tool's output, which `concord build` does not count as a source.
const out = join(sdkDir, 'node_modules', '.cache', 'concord-sdk-test');
await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });
const esbuild = await import('esbuild');
const stubs = join(sdkDir, 'test', 'stubs');
await esbuild.build({
  entryPoints: [join(sdkDir, 'src', 'index.ts')],
  bundle: true,
  outfile: join(out, 'sdk.mjs'),
  format: 'esm',
  platform: 'neutral',
  target: 'es2022',
  logLevel: 'warning',
  plugins: [
    {
      name: 'concord-host-stubs',
      setup(build) {
        build.onResolve({ filter: /^concord:agent\// }, (args) => {
          const iface = /^concord:agent\/([a-z-]+)@/.exec(args.path)?.[1];
          return { path: `./${relative(out, join(stubs, `${iface}.mjs`))}`, external: true };
        });
      },
    },
  ],
});

const tests = (await readdir(join(sdkDir, 'test'))).filter((f) => f.endsWith('.test.mjs')).map((f) => join(sdkDir, 'test', f));
const run = spawnSync(process.execPath, ['--test', '--test-reporter=spec', ...tests], { stdio: 'inherit' });
process.exit(run.status ?? 1);
