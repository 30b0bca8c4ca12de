// The committed build is the build of the source, and it stays small.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import zlib from 'node:zlib';
import { build } from '../build.mjs';

test('dist/qoe.min.js is the build of src/qoe.js and loads as a module', async () => {
  const built = await build();
  const committed = fs.readFileSync(new URL('../dist/qoe.min.js', import.meta.url), 'utf8');
  assert.equal(committed, built, 'run `node build.mjs` in sdk/web');
  const gz = zlib.gzipSync(built).length;
  console.log(`qoe-web-sdk: ${built.length} bytes minified, ${gz} bytes gzipped`);
  assert.ok(gz < 6000, `${gz} bytes gzipped`);
  const mod = await import('../dist/qoe.min.js');
  assert.equal(typeof mod.monitor, 'function');
});
