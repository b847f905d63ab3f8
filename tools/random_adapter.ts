/**
 * Deterministic random LoRA adapters for a UNet's targets, in the three key formats: for tests
 * and for the test adapter shipped in models/hub-cache.
 *
 *   deno run -A tools/random_adapter.ts <model-dir> <out.safetensors> [seed] [rank]
 */
import { findLoraTargets, type LoraTarget } from "../loras/graph_rewrite.ts";
import { type Tensor, writeSafetensors } from "../loras/safetensors.ts";
import type { KeyFormat } from "../loras/keys.ts";
import { gaussianNoise } from "../pipeline/rng.ts";

export interface RandomAdapterOptions {
  seed: number;
  rank: number;
  format: KeyFormat;
  /** Which targets get a LoRA (default: all). */
  only?: (target: LoraTarget) => boolean;
  alpha?: number;
  magnitude?: number;
}

export function randomAdapter(targets: LoraTarget[], options: RandomAdapterOptions): Uint8Array {
  const { seed, rank, format, alpha, magnitude = 0.2 } = options;
  const tensors: Record<string, Tensor> = {};
  targets.filter(options.only ?? (() => true)).forEach((t, i) => {
    const down = {
      shape: [rank, t.inFeatures],
      data: gaussianNoise(seed + 2 * i, rank * t.inFeatures).map((v) => v * magnitude),
    };
    const up = {
      shape: [t.outFeatures, rank],
      data: gaussianNoise(seed + 2 * i + 1, t.outFeatures * rank).map((v) => v * magnitude),
    };
    const alphaTensor = alpha === undefined ? undefined : { shape: [], data: Float32Array.of(alpha) };
    if (format === "legacy-attention-processor") {
      const [, prefix, proj] = /^(.*)\.(to_q|to_k|to_v|to_out\.0)$/.exec(t.module)!;
      const name = proj === "to_out.0" ? "to_out" : proj;
      tensors[`${prefix}.processor.${name}_lora.down.weight`] = down;
      tensors[`${prefix}.processor.${name}_lora.up.weight`] = up;
    } else if (format === "diffusers-peft") {
      tensors[`unet.${t.module}.lora_A.weight`] = down;
      tensors[`unet.${t.module}.lora_B.weight`] = up;
      if (alphaTensor) tensors[`unet.${t.module}.alpha`] = alphaTensor;
    } else {
      const base = `lora_unet_${t.module.replaceAll(".", "_")}`;
      tensors[`${base}.lora_down.weight`] = down;
      tensors[`${base}.lora_up.weight`] = up;
      if (alphaTensor) tensors[`${base}.alpha`] = alphaTensor;
    }
  });
  return writeSafetensors(tensors);
}

if (import.meta.main) {
  const [modelDir, out, seed = "1", rank = "4"] = Deno.args;
  const targets = findLoraTargets(await Deno.readFile(`${modelDir}/unet/model.onnx`));
  await Deno.writeFile(
    out,
    randomAdapter(targets, { seed: Number(seed), rank: Number(rank), format: "legacy-attention-processor" }),
  );
  console.log(`wrote ${out}: ${targets.length} targets, rank ${rank}`);
}
