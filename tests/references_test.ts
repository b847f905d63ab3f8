/** The repository's own text cites files that exist. */
import { deepStrictEqual as assertEquals } from "node:assert/strict";

const ROOT = new URL("..", import.meta.url).pathname;
/** Not the repository's own text: dependencies, caches and scratch work. */
const SKIP = new Set(["node_modules", ".git", ".cache", "scratch"]);
/** A placeholder folder (`DIR/parity/`, `models/NAME/`), not a path. */
const PLACEHOLDER = /(^|\/)[A-Z_]+\//;
/** A relative path with at least one folder, to a kind of file this repository writes about. */
const CITED_PATH = /(?<![\w@:/.$-])((?:[\w.-]+\/)+[\w.-]+\.(?:md|ts|py|sh|yaml))\b/g;

async function* sources(dir: string): AsyncGenerator<string> {
  for await (const entry of Deno.readDir(`${ROOT}${dir}`)) {
    const path = dir ? `${dir}/${entry.name}` : entry.name;
    if (entry.isDirectory && !SKIP.has(entry.name)) yield* sources(path);
    else if (entry.isFile && /\.(ts|md)$/.test(entry.name)) yield path;
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(`${ROOT}${path}`);
    return true;
  } catch {
    return false;
  }
}

Deno.test("references: every file the TypeScript sources and the Markdown documents cite exists", async () => {
  const missing: string[] = [];
  for await (const file of sources("")) {
    const folder = file.includes("/") ? file.slice(0, file.lastIndexOf("/") + 1) : "";
    for (const [, cited] of (await Deno.readTextFile(`${ROOT}${file}`)).matchAll(CITED_PATH)) {
      if (PLACEHOLDER.test(cited) || await exists(cited) || await exists(`${folder}${cited}`)) continue;
      missing.push(`${file} cites ${cited}`);
    }
  }
  assertEquals(missing, []);
});
