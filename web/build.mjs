// Builds the pages into dist/ (or the directory given with --outdir): TypeScript and CSS
// bundled and minified by esbuild, HTML copied. The output depends only on the sources and the
// locked esbuild, so a rebuild of unchanged sources gives the same bytes: the server embeds
// dist/ (committed), and a test rebuilds it and fails when it differs.
//
// @tidings/client is the SDK's source (../clients/typescript/src, see tsconfig.json's paths),
// bundled in; its one dependency, @bufbuild/protobuf, comes from the SDK's node_modules.

import * as esbuild from "esbuild";
import { cpSync, mkdirSync, readdirSync, rmSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const i = process.argv.indexOf("--outdir");
const outdir = i > 0 ? process.argv[i + 1] : join(here, "dist");
const src = join(here, "src");

rmSync(outdir, { recursive: true, force: true });
mkdirSync(outdir, { recursive: true });

const entries = [
  "demo/demo.ts",
  "demo/demo.css",
  "widget/widget.ts",
  "widget/chat.ts",
  "widget/chat.css",
  "widget/agent.ts",
  "widget/agent.css",
].map((p) => join(src, p));

await esbuild.build({
  entryPoints: entries,
  outbase: src,
  outdir,
  bundle: true,
  format: "iife",
  target: "es2022",
  minify: true,
  legalComments: "none",
  charset: "utf8",
  tsconfig: join(here, "tsconfig.json"),
  logLevel: "warning",
});

// Pages as they are.
for (const dir of ["demo", "widget"]) {
  for (const f of readdirSync(join(src, dir))) {
    if (f.endsWith(".html")) cpSync(join(src, dir, f), join(outdir, dir, f));
  }
}
console.log(`built into ${relative(process.cwd(), outdir) || "."}`);
