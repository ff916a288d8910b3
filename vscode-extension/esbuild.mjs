// Bundles the extension into dist/main.js with esbuild; `--production` minifies and drops source maps.
import * as fs from "node:fs";

import * as esbuild from "esbuild";

const production = process.argv.includes("--production");

await esbuild.build({
    entryPoints: ["src/main.ts"],
    bundle: true,
    outfile: "dist/main.js",
    // `vscode` is provided by the extension host at run time and must never be bundled.
    external: ["vscode"],
    format: "cjs",
    platform: "node",
    target: "node20",
    minify: production,
    sourcemap: !production,
    logLevel: "warning",
});

// The repository's .sandlink.toml schemas (scripts/gen-schema) ship in the .vsix for `tomlValidation`.
fs.mkdirSync("dist/schemas", { recursive: true });
for (const name of ["sandlink.schema.json", "sandlink-config.schema.json"]) {
    fs.copyFileSync(`../schemas/${name}`, `dist/schemas/${name}`);
}
