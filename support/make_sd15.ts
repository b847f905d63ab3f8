/**
 * SD-1.5-scale models in the common SD ONNX layout with seeded random weights, made on demand by
 * training/make_sd15.py and cached (too large to commit): for the SD-1.5 tests, the GPU benchmark
 * and `deno task make-sd15` (tools/make_sd15.ts). By default a model goes to
 * $CACHE_DIR/sd15/<size>-<variant>-seed<N>-v<format>; a directory that already holds a complete
 * model of the same kind is reused.
 */
import { join } from "node:path";
import { loadConfig } from "../config.ts";
import { runPython } from "./python.ts";

export const SD15_VARIANTS = ["fp32", "fp16", "scalar-timestep"] as const;
export type Sd15Variant = typeof SD15_VARIANTS[number];
export type Sd15Size = "full" | "mini";
/** Bump with training/make_sd15.py's FORMAT_VERSION: cached models of another format are remade. */
const FORMAT = 1;

export interface Sd15Options {
  variant: Sd15Variant;
  size: Sd15Size;
  seed?: number;
}

/** What make_sd15.py records in make_sd15.json. */
export interface Sd15Info {
  variant: Sd15Variant;
  size: Sd15Size;
  seed: number;
  format: number;
  hidden_size: number;
  parameters: Record<string, number>;
  seconds: Record<string, number>;
}

export function sd15CacheDir(options: Sd15Options, cacheRoot = loadConfig().cacheDir): string {
  return join(cacheRoot, "sd15", `${options.size}-${options.variant}-seed${options.seed ?? 0}-v${FORMAT}`);
}

async function existing(dir: string, options: Sd15Options): Promise<Sd15Info | undefined> {
  try {
    const info: Sd15Info = JSON.parse(await Deno.readTextFile(join(dir, "make_sd15.json")));
    const same = info.variant === options.variant && info.size === options.size &&
      info.seed === (options.seed ?? 0) && info.format === FORMAT;
    return same ? info : undefined;
  } catch {
    return undefined;
  }
}

/** The model directory, made unless it already holds this model. */
export async function makeSd15(
  options: Sd15Options,
  out = sd15CacheDir(options),
): Promise<{ dir: string; info: Sd15Info; made: boolean }> {
  const found = await existing(out, options);
  if (found) return { dir: out, info: found, made: false };
  const training = new URL("../training/", import.meta.url).pathname;
  await runPython([
    `${training}make_sd15.py`,
    "--out",
    out,
    "--variant",
    options.variant,
    "--size",
    options.size,
    "--seed",
    String(options.seed ?? 0),
  ], training);
  const info = await existing(out, options);
  if (!info) throw new Error(`make_sd15.py finished without a complete model in ${out}`);
  return { dir: out, info, made: true };
}
