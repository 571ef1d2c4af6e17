// Generates the TypeScript declarations of the `agent` world from wit/ (the
// single source of truth) into generated/ (gitignored), with jco's guest
// type generator. Run by build.mjs and `npm test`; quiet when up to date.
//
// `jco guest-types` (jco 1.35.0) fails with "failed to get path metadata":
// the preview2-shim it runs on (0.26) starts with no preopened directories,
// so the WIT folder is invisible to it. We call the same generator through
// its JS API after preopening `/` on the very shim instance it uses.
import { createRequire } from 'node:module';
import { pathToFileURL, fileURLToPath } from 'node:url';
import { mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';

const here = dirname(fileURLToPath(import.meta.url));
export const sdkDir = resolve(here, '..');
export const witDir = resolve(sdkDir, '../../wit');
export const generatedDir = join(sdkDir, 'generated');

async function newestWit() {
  let newest = 0;
  const walk = async (dir) => {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) await walk(path);
      else if (entry.name.endsWith('.wit')) newest = Math.max(newest, (await stat(path)).mtimeMs);
    }
  };
  await walk(witDir);
  return newest;
}

export async function generateTypes({ force = false } = {}) {
  const stamp = join(generatedDir, '.stamp');
  const witTime = await newestWit();
  if (!force) {
    try {
      if (Number(await readFile(stamp, 'utf8')) === witTime) return false;
    } catch {}
  }
  const require = createRequire(import.meta.url);
  const transpileIndex = require.resolve('@bytecodealliance/jco-transpile');
  const shim = createRequire(transpileIndex).resolve('@bytecodealliance/preview2-shim/filesystem');
  const { _setPreopens } = await import(pathToFileURL(shim).href);
  _setPreopens({ '/': '/' });
  const { generateGuestTypes } = await import(pathToFileURL(transpileIndex).href);
  const files = await generateGuestTypes(witDir, { worldName: 'agent', outDir: '' });
  await rm(generatedDir, { recursive: true, force: true });
  for (const [name, data] of Object.entries(files)) {
    const path = join(generatedDir, name);
    await mkdir(dirname(path), { recursive: true });
    await writeFile(path, data);
  }
  await writeFile(stamp, String(witTime));
  return true;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  generateTypes({ force: process.argv.includes('--force') }).catch((e) => {
    console.error(`concord sdk-js: generating the TypeScript declarations from ${witDir} failed: ${e?.message ?? e}`);
    process.exit(1);
  });
}
