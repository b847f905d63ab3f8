/**
 * The checks an SD-1.5-shaped export must pass, shared by the fast test (mini width, every variant)
 * and the scale test (SD 1.5's own size): the published Smooth-LoRA's key set, a mixed-adapter batch
 * against merged weights, and the routes served from the directory with no code change.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { join } from "node:path";
import * as ort from "onnxruntime-node";
import { FakeHub } from "../support/hub_server.ts";
import { post, withServer } from "./helpers.ts";
import { type LoraTarget, mergeIntoWeights } from "../loras/graph_rewrite.ts";
import { loraGraph } from "../loras/graph_cache.ts";
import { buildAdapter } from "../loras/adapter.ts";
import { parseSafetensors } from "../loras/safetensors.ts";
import { packLoraFeeds, type RowAdapters } from "../loras/pack.ts";
import { fromOutputs, inputSpecs, toInputs } from "../pipeline/session_io.ts";
import { gaussianNoise } from "../pipeline/rng.ts";
import { randomAdapter, unetAttentionTargets, type UnetLayout } from "../support/random_adapter.ts";
import { maxAbsDifference } from "../support/parity.ts";

export const SMOOTH_LORA_REPO = "shi-labs/smooth-diffusion-lora";
export const SMOOTH_LORA_FILE = "smooth_lora.safetensors";

export async function unetLayout(modelDir: string): Promise<UnetLayout> {
  return JSON.parse(await Deno.readTextFile(join(modelDir, "unet/config.json")));
}

/**
 * Entries that make the update W' - W about a third of W's own scale (default-initialised W has
 * entries of about 1/sqrt(3 in); up @ down sums 8 products): a trained LoRA's size. Larger random
 * updates saturate SD 1.5's attention softmax, where fp32 rounding flips which key wins.
 */
const realistic = (t: LoraTarget) => 0.25 * t.inFeatures ** -0.25;

/**
 * A file with exactly the published Smooth-LoRA's keys and shapes for this UNet: legacy
 * attention-processor names, rank 8, down [8, in] and up [out, 8] for every projection.
 */
export function smoothLoraKeySet(layout: UnetLayout, seed = 11): { file: Uint8Array; targets: LoraTarget[] } {
  const targets = unetAttentionTargets(layout);
  return {
    file: randomAdapter(targets, {
      seed,
      rank: 8,
      format: "legacy-attention-processor",
      magnitude: realistic,
    }),
    targets,
  };
}

/** W' - W = scale * up @ down per module, read straight from the file's legacy keys. */
function legacyDelta(file: Uint8Array, scale: number) {
  const tensors = parseSafetensors(file).tensors;
  return (t: LoraTarget) => {
    const [, prefix, proj] = /^(.*)\.(to_q|to_k|to_v|to_out\.0)$/.exec(t.module)!;
    const key = `${prefix}.processor.${proj === "to_out.0" ? "to_out" : proj}_lora`;
    const down = tensors.get(`${key}.down.weight`), up = tensors.get(`${key}.up.weight`);
    if (!down || !up) return undefined;
    const r = down.shape[0], delta = new Float32Array(t.outFeatures * t.inFeatures);
    for (let o = 0; o < t.outFeatures; o++) {
      for (let k = 0; k < r; k++) {
        const u = scale * up.data[o * r + k];
        for (let i = 0; i < t.inFeatures; i++) {
          delta[o * t.inFeatures + i] += u * down.data[k * t.inFeatures + i];
        }
      }
    }
    return delta;
  };
}

function externalReader(dir: string) {
  return (location: string, offset: number, length: number) => {
    const file = Deno.openSync(join(dir, location));
    try {
      file.seekSync(offset, Deno.SeekMode.Start);
      const bytes = new Uint8Array(length);
      for (let read = 0; read < length;) read += file.readSync(bytes.subarray(read)) ?? length;
      return bytes;
    } finally {
      file.close();
    }
  };
}

/** The UNet with `file` at `scale` merged into its weights, written beside links to its external data. */
async function mergedUnet(unetDir: string, file: Uint8Array, scale: number): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "merged-unet-" });
  const merged = mergeIntoWeights(
    await Deno.readFile(join(unetDir, "model.onnx")),
    legacyDelta(file, scale),
    externalReader(unetDir),
  );
  await Deno.writeFile(join(dir, "model.onnx"), merged);
  for await (const entry of Deno.readDir(unetDir)) {
    if (entry.name.endsWith("_data")) await Deno.link(join(unetDir, entry.name), join(dir, entry.name));
  }
  return dir;
}

const session = (path: string) =>
  ort.InferenceSession.create(path, { graphOptimizationLevel: (Deno.env.get("OPT") ?? "all") as "all" });

async function runUnet(s: ort.InferenceSession, feeds: Record<string, ort.Tensor>, extra = {}) {
  const out = fromOutputs(
    await s.run({ ...toInputs(feeds, inputSpecs(s)), ...extra }) as Record<string, ort.Tensor>,
  );
  return out.out_sample.data as Float32Array;
}

export interface MixedBatchResult {
  /** Largest |batched - merged| over the rows, and the adapter's own effect, for the report. */
  maxDifference: number;
  adapterEffect: number;
  /** Seconds and bytes of the graph rewrite (a cache miss). */
  rewriteSeconds: number;
  targets: number;
}

/**
 * One batch of three rows (no adapter, the key set at 1, at 0.5) through the LoRA-rewritten UNet
 * (rewritten into `cacheDir`) equals each row alone on merged weights within `tolerance`.
 */
export async function checkMixedBatch(
  modelDir: string,
  cacheDir: string,
  tolerance: number,
): Promise<MixedBatchResult> {
  const layout = await unetLayout(modelDir);
  const { file } = smoothLoraKeySet(layout);
  const unetDir = join(modelDir, "unet");
  const started = performance.now();
  const lora = await loraGraph(join(unetDir, "model.onnx"), cacheDir);
  const rewriteSeconds = (performance.now() - started) / 1000;
  assertEquals(lora.targets.length, 128, "LoRA inputs on all 128 attention projections");
  const targetMap = new Map(lora.targets.map((t) => [t.module, t]));
  const source = { repo: SMOOTH_LORA_REPO, file: SMOOTH_LORA_FILE, revision: "main", commit: "0".repeat(40) };
  const adapter = buildAdapter(source, file, targetMap);
  assertEquals(adapter.modules.size, 128, "the key set applies to every projection");
  assertEquals(adapter.ignored, [], "no key left unapplied");

  const rows: RowAdapters[] = [[], [{ adapter, scale: 1 }], [{ adapter, scale: 0.5 }]];
  const n = rows.length, side = 8, hidden = layout.cross_attention_dim;
  const feeds = {
    sample: new ort.Tensor("float32", gaussianNoise(1, n * 4 * side * side), [n, 4, side, side]),
    timestep: new ort.Tensor("float32", Float32Array.of(981, 981, 981), [n]),
    encoder_hidden_states: new ort.Tensor("float32", gaussianNoise(2, n * 77 * hidden), [n, 77, hidden]),
  };
  const row = (i: number) =>
    Object.fromEntries(
      Object.entries(feeds).map(([name, t]) => {
        const size = t.data.length / n;
        return [
          name,
          new ort.Tensor("float32", (t.data as Float32Array).slice(i * size, (i + 1) * size), [
            1,
            ...t.dims.slice(1),
          ]),
        ];
      }),
    );

  const rewritten = await session(lora.path);
  const batched = await runUnet(
    rewritten,
    feeds,
    toInputs(packLoraFeeds(lora.targets, rows), inputSpecs(rewritten)),
  );
  await rewritten.release();
  const size = batched.length / n;
  let maxDifference = 0, adapterEffect = 0;
  const base = await session(join(unetDir, "model.onnx"));
  const plain = await runUnet(base, row(0));
  await base.release();
  maxDifference = maxAbsDifference(batched.subarray(0, size), plain);
  for (const [i, scale] of [[1, 1], [2, 0.5]]) {
    const dir = await mergedUnet(unetDir, file, scale);
    try {
      const merged = await session(join(dir, "model.onnx"));
      const expected = await runUnet(merged, row(i));
      await merged.release();
      maxDifference = Math.max(
        maxDifference,
        maxAbsDifference(batched.subarray(i * size, (i + 1) * size), expected),
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }
  const alone = await session(join(unetDir, "model.onnx"));
  adapterEffect = maxAbsDifference(batched.subarray(size, 2 * size), await runUnet(alone, row(1)));
  await alone.release();
  assert(maxDifference <= tolerance, `batched vs merged: ${maxDifference} > ${tolerance}`);
  assert(adapterEffect > 10 * tolerance, `the adapter changed the output by only ${adapterEffect}`);
  return { maxDifference, adapterEffect, rewriteSeconds, targets: lora.targets.length };
}

export interface ServedResult {
  precision: string;
  perRowTimestep: boolean;
  seconds: Record<string, number>;
}

/**
 * The directory served as it is (`MODEL=dir`): /v1/models describes it; /generate with the key-set
 * adapter fetched from a loopback Hub applies all 128 projections; /invert and /interpolate answer
 * at 128x128 in 2 steps.
 */
export async function checkServed(modelDir: string, env: Record<string, string> = {}): Promise<ServedResult> {
  const layout = await unetLayout(modelDir);
  const hub = new FakeHub();
  const cache = await Deno.makeTempDir({ prefix: "hub-cache-" });
  await hub.addCommit(SMOOTH_LORA_REPO, { [SMOOTH_LORA_FILE]: smoothLoraKeySet(layout).file });
  const seconds: Record<string, number> = {};
  const timed = async <T>(name: string, fn: () => Promise<T>) => {
    const started = performance.now();
    const result = await fn();
    seconds[name] = Number(((performance.now() - started) / 1000).toFixed(2));
    return result;
  };
  try {
    return await withServer(
      { MODEL: modelDir, HF_ENDPOINT: hub.url, HF_HUB_CACHE: cache, LORA_BUNDLED_CACHE: "", ...env },
      async (server) => {
        const model = (await (await fetch(`${server.url}/v1/models`)).json()).data[0];
        assertEquals([model.native_width, model.native_height, model.lora_targets], [512, 512, 128]);
        const size = { width: 128, height: 128 };
        const generated = await timed("generate", async () => {
          const res = await post(`${server.url}/generate`, {
            prompt: "a photograph of an astronaut riding a horse",
            ...size,
            steps: 2,
            seed: 3,
            lora: { repo: SMOOTH_LORA_REPO, scale: 0.5 },
          });
          assertEquals(res.status, 200, await res.clone().text());
          return await res.json();
        });
        const [report] = generated.parameters.lora;
        assertEquals([report.applied_modules, report.format, report.not_applied], [
          128,
          "legacy-attention-processor",
          undefined,
        ]);
        assertEquals([generated.images[0].width, generated.images[0].height], [128, 128]);
        const inverted = await timed("invert", async () => {
          const res = await post(`${server.url}/invert`, {
            image: generated.images[0].data,
            prompt: "",
            steps: 2,
            ...size,
          });
          assertEquals(res.status, 200, await res.clone().text());
          return await res.json();
        });
        assertEquals(inverted.latent.shape, [1, 4, 16, 16]);
        const interpolated = await timed("interpolate", async () => {
          const res = await post(`${server.url}/interpolate`, {
            from: { prompt: "a cat", seed: 1 },
            to: { prompt: "a dog", seed: 2 },
            frames: 3,
            steps: 2,
            ...size,
          });
          assertEquals(res.status, 200, await res.clone().text());
          return await res.json();
        });
        assertEquals(interpolated.frames.length, 3);
        assert(interpolated.distances.every((d: number) => Number.isFinite(d) && d > 0));
        return { precision: model.precision, perRowTimestep: model.capabilities.per_row_timestep, seconds };
      },
    );
  } finally {
    await hub.close();
    await Deno.remove(cache, { recursive: true });
  }
}
