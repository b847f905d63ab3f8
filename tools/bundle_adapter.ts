/**
 * Puts an adapter file (and optionally its model card) into the Hub cache this repository ships
 * (models/hub-cache), in the Hub's own layout, so `deno task start` can use it with no network:
 *   models--org--name/refs/main            -> the commit
 *   models--org--name/snapshots/<commit>/<file>  (and README.md)
 * The commit id is the SHA-1 of the adapter's content (a stand-in: these repos are not on the Hub).
 * Earlier snapshots stay: a new file is a new commit of the same repo, still reachable by revision.
 * (The card is not hashed: bundling the same file with a new card rewrites that commit's README.md.)
 *
 *   deno run -A tools/bundle_adapter.ts <file.safetensors> <org/name> [--name name-in-repo]
 *                                      [--card README.md] [--cache dir]
 */
import { join } from "node:path";
import { parseArgs } from "node:util";
import { BUNDLED_HUB_CACHE } from "../config.ts";

export async function bundleAdapter(
  bytes: Uint8Array,
  repo: string,
  file: string,
  cacheDir = BUNDLED_HUB_CACHE,
  card?: Uint8Array,
): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-1", bytes as Uint8Array<ArrayBuffer>);
  const commit = Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
  const root = join(cacheDir, `models--${repo.replace("/", "--")}`);
  const snapshot = join(root, "snapshots", commit);
  await Deno.mkdir(join(root, "refs"), { recursive: true });
  await Deno.mkdir(snapshot, { recursive: true });
  await Deno.writeFile(join(snapshot, file), bytes);
  if (card) await Deno.writeFile(join(snapshot, "README.md"), card);
  await Deno.writeTextFile(join(root, "refs", "main"), commit);
  return commit;
}

if (import.meta.main) {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: { name: { type: "string" }, card: { type: "string" }, cache: { type: "string" } },
  });
  const [source, repo] = positionals;
  if (!source || !repo) {
    console.error(
      "usage: deno run -A tools/bundle_adapter.ts <file.safetensors> <org/name> [--name name-in-repo] [--card README.md] [--cache dir]",
    );
    Deno.exit(2);
  }
  const commit = await bundleAdapter(
    await Deno.readFile(source),
    repo,
    values.name ?? source.split("/").pop()!,
    values.cache,
    values.card ? await Deno.readFile(values.card) : undefined,
  );
  console.log(`${repo}@${commit}`);
}
