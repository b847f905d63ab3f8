/**
 * The LoRA-rewritten UNet on disk, keyed by the source graph's content: rewritten once, then
 * loaded from the cache on every later start. External weight files are hard-linked into the cache
 * entry (ONNX Runtime refuses external data outside the model's directory, symlinks included), so a
 * multi-gigabyte export is not copied; across file systems, where a hard link is impossible, they
 * are copied once.
 */
import { dirname, join } from "node:path";
import { addLoraInputs, type LoraTarget, REWRITE_VERSION } from "./graph_rewrite.ts";

export async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

export interface LoraGraph {
  /** Path of the rewritten model.onnx. */
  path: string;
  targets: LoraTarget[];
}

export async function loraGraph(sourcePath: string, cacheRoot: string): Promise<LoraGraph> {
  const source = await Deno.readFile(sourcePath);
  const entry = join(cacheRoot, "lora-unet", `${await sha256Hex(source)}-v${REWRITE_VERSION}`);
  try {
    const targets = JSON.parse(await Deno.readTextFile(join(entry, "targets.json")));
    return { path: join(entry, "model.onnx"), targets };
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  const { model, targets, externalFiles } = addLoraInputs(source);
  await Deno.mkdir(dirname(entry), { recursive: true });
  const staging = `${entry}.tmp-${crypto.randomUUID()}`;
  await Deno.mkdir(staging);
  try {
    await Deno.writeFile(join(staging, "model.onnx"), model);
    for (const file of externalFiles) {
      await Deno.mkdir(dirname(join(staging, file)), { recursive: true });
      const from = join(dirname(sourcePath), file), to = join(staging, file);
      await Deno.link(from, to).catch(() => Deno.copyFile(from, to));
    }
    await Deno.writeTextFile(join(staging, "targets.json"), JSON.stringify(targets));
    await Deno.rename(staging, entry); // atomic: a reader sees a whole entry or none
  } catch (error) {
    await Deno.remove(staging, { recursive: true }).catch(() => {});
    if (!(error instanceof Deno.errors.AlreadyExists) && !(await Deno.stat(entry).catch(() => null))) {
      throw error;
    }
  }
  return { path: join(entry, "model.onnx"), targets };
}
