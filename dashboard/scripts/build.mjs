// Builds the dashboard and the widget into ../assets/dashboard (or the directory given as the first
// argument), the files the server embeds. The output must be byte-for-byte reproducible from the
// sources and the lock file: tests/api/dashboard.rs rebuilds it and compares with the committed one.
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const out = path.resolve(process.argv[2] ?? path.join(root, '..', 'assets', 'dashboard'));
fs.rmSync(out, { recursive: true, force: true });
fs.mkdirSync(out, { recursive: true });

const common = {
  bundle: true,
  minify: true,
  format: 'iife',
  target: 'es2020',
  jsx: 'automatic',
  jsxImportSource: 'preact',
  legalComments: 'none',
  charset: 'utf8',
  logLevel: 'warning',
  absWorkingDir: root,
};

await esbuild.build({
  ...common,
  entryPoints: { dashboard: 'src/dashboard/main.tsx' },
  outdir: out,
});
await esbuild.build({
  ...common,
  entryPoints: { 'tollgate-usage': 'src/widget.tsx' },
  outdir: out,
  loader: { '.css': 'text' },
});
fs.copyFileSync(path.join(root, 'src/dashboard/index.html'), path.join(out, 'index.html'));

let total = 0;
for (const f of fs.readdirSync(out).sort()) {
  const bytes = fs.readFileSync(path.join(out, f));
  const gz = zlib.gzipSync(bytes, { level: 9 }).length;
  if (f !== 'tollgate-usage.js') total += gz;
  console.log(`${f.padEnd(20)} ${String(bytes.length).padStart(8)} B  ${String(gz).padStart(7)} B gzipped`);
}
console.log(`first view of /dashboard: ${total} B gzipped`);
