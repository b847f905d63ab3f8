/**
 * Where the served model comes from: the embedded default, a local directory in the SD ONNX
 * layout, or a Hugging Face repo id whose ONNX files are fetched into the Hub cache.
 */
import { downloadFileToCacheDir, listFiles } from "@huggingface/hub";
import { EMBEDDED_MODEL_DIR } from "../config.ts";

export interface HubSettings {
  endpoint: string;
  token?: string;
  cacheDir: string;
}

export interface ModelLocation {
  name: string;
  directory: string;
}

const LAYOUT_DIRS = ["text_encoder/", "unet/", "vae_encoder/", "vae_decoder/", "tokenizer/", "scheduler/"];
const REPO_ID = /^[A-Za-z0-9][\w.-]*\/[\w.-]+$/;

function isLayoutFile(path: string): boolean {
  if (path === "model_index.json") return true;
  return LAYOUT_DIRS.some((dir) => path.startsWith(dir)) &&
    !/\.(bin|safetensors|msgpack|h5|ckpt)$/.test(path);
}

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isDirectory;
  } catch {
    return false;
  }
}

export async function resolveModel(model: string | undefined, hub: HubSettings): Promise<ModelLocation> {
  if (!model) return { name: "tiny-sd-shapes", directory: EMBEDDED_MODEL_DIR };
  if (await isDirectory(model)) {
    return { name: model.replace(/\/+$/, "").split("/").pop()!, directory: model };
  }
  const [repoName, revision = "main"] = model.split("@");
  if (!REPO_ID.test(repoName) || repoName.includes("..")) {
    throw new Error(`MODEL=${model} is neither a directory nor a Hugging Face repo id (org/name[@revision])`);
  }
  const repo = { type: "model" as const, name: repoName };
  const common = { repo, revision, hubUrl: hub.endpoint, accessToken: hub.token, cacheDir: hub.cacheDir };
  let indexPath: string | undefined;
  for await (const file of listFiles({ ...common, recursive: true })) {
    if (file.type !== "file" || !isLayoutFile(file.path)) continue;
    const local = await downloadFileToCacheDir({ ...common, path: file.path });
    if (file.path === "model_index.json") indexPath = local;
  }
  if (!indexPath) throw new Error(`${repoName}@${revision} has no model_index.json: not an SD ONNX export`);
  return { name: repoName, directory: indexPath.slice(0, -"/model_index.json".length) };
}
