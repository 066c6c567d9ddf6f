// The package's size in a browser bundle: everything exported, bundled with its one runtime
// dependency (@bufbuild/protobuf), minified by esbuild, then gzipped. `npm run size`.
import { build } from "esbuild";
import { gzipSync } from "node:zlib";

const result = await build({
  stdin: { contents: 'export * from "./src/index.ts";', resolveDir: ".", loader: "ts" },
  bundle: true,
  minify: true,
  format: "esm",
  platform: "browser",
  target: "es2022",
  write: false,
});
const min = result.outputFiles[0].contents;
const kib = (n) => `${(n / 1024).toFixed(1)} KiB`;
console.log(`minified ${kib(min.length)}, minified + gzip ${kib(gzipSync(min, { level: 9 }).length)}`);
