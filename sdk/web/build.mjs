// Builds dist/qoe.min.js from src/qoe.js (terser, pinned in package-lock.json) and prints its
// size. `node build.mjs --check` fails when the committed build is not the build of the source.
import { minify } from 'terser';
import fs from 'node:fs';
import zlib from 'node:zlib';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const src = path.join(here, 'src/qoe.js');
const out = path.join(here, 'dist/qoe.min.js');

export async function build() {
  const code = fs.readFileSync(src, 'utf8');
  const result = await minify(code, {
    module: true,
    ecma: 2020,
    compress: { passes: 2 },
    mangle: { properties: false },
    format: { comments: false, preamble: '/* qoe-web-sdk: beacon protocol v1 reporting for HTML5 video (src/qoe.js) */' },
  });
  return `${result.code}\n`;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const built = await build();
  if (process.argv.includes('--check')) {
    const committed = fs.existsSync(out) ? fs.readFileSync(out, 'utf8') : '';
    if (committed !== built) {
      console.error('dist/qoe.min.js is not the build of src/qoe.js: run `node build.mjs` in sdk/web');
      process.exit(1);
    }
  } else {
    fs.mkdirSync(path.dirname(out), { recursive: true });
    fs.writeFileSync(out, built);
  }
  console.log(`dist/qoe.min.js: ${built.length} bytes minified, ${zlib.gzipSync(built).length} bytes gzipped`);
}
