/**
 * Puts an adapter file into the Hub cache this repository ships (models/hub-cache), in the Hub's
 * own layout, so `deno task start` can use it with no network:
 *   models--org--name/refs/main            -> the commit
 *   models--org--name/snapshots/<commit>/<file>
 * The commit id is the SHA-1 of the file's content (a stand-in: these repos are not on the Hub).
 *
 *   deno run -A tools/bundle_adapter.ts <file.safetensors> <org/name> [name-in-repo] [cache-dir]
 */
import { join } from "node:path";
import { BUNDLED_HUB_CACHE } from "../config.ts";

export async function bundleAdapter(
  bytes: Uint8Array,
  repo: string,
  file: string,
  cacheDir = BUNDLED_HUB_CACHE,
): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-1", bytes as Uint8Array<ArrayBuffer>);
  const commit = Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
  const root = join(cacheDir, `models--${repo.replace("/", "--")}`);
  await Deno.remove(root, { recursive: true }).catch(() => {});
  await Deno.mkdir(join(root, "refs"), { recursive: true });
  await Deno.mkdir(join(root, "snapshots", commit), { recursive: true });
  await Deno.writeFile(join(root, "snapshots", commit, file), bytes);
  await Deno.writeTextFile(join(root, "refs", "main"), commit);
  return commit;
}

if (import.meta.main) {
  const [source, repo, file, cacheDir] = Deno.args;
  if (!source || !repo) {
    console.error(
      "usage: deno run -A tools/bundle_adapter.ts <file.safetensors> <org/name> [name-in-repo] [cache-dir]",
    );
    Deno.exit(2);
  }
  const commit = await bundleAdapter(
    await Deno.readFile(source),
    repo,
    file ?? source.split("/").pop()!,
    cacheDir,
  );
  console.log(`${repo}@${commit}`);
}
