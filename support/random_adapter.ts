/**
 * Deterministic random LoRA adapters for a UNet's targets, in the three key formats: for tests,
 * benchmarks, and the test adapter shipped in models/hub-cache (tools/random_adapter.ts).
 */
import type { LoraTarget } from "../loras/graph_rewrite.ts";
import { type Tensor, writeSafetensors } from "../loras/safetensors.ts";
import type { KeyFormat } from "../loras/keys.ts";
import { gaussianNoise } from "../pipeline/rng.ts";

/** The parts of a diffusers UNet2DConditionModel config that place its attentions. */
export interface UnetLayout {
  block_out_channels: number[];
  layers_per_block: number;
  cross_attention_dim: number;
  down_block_types: string[];
  up_block_types: string[];
}

/**
 * Every attention projection of a diffusers UNet, from its config alone (not from a graph): to_q,
 * to_k, to_v and to_out.0 of attn1 and attn2 in each transformer block, the modules the published
 * Smooth-LoRA's keys name (128 for SD 1.5: 16 transformer blocks).
 */
export function unetAttentionTargets(layout: UnetLayout): LoraTarget[] {
  const chs = layout.block_out_channels, rev = [...chs].reverse();
  const blocks: { path: string; ch: number }[] = [];
  const crossAttn = (type: string) => type.startsWith("CrossAttn");
  layout.down_block_types.forEach((type, i) => {
    if (!crossAttn(type)) return;
    for (let j = 0; j < layout.layers_per_block; j++) {
      blocks.push({ path: `down_blocks.${i}.attentions.${j}`, ch: chs[i] });
    }
  });
  blocks.push({ path: "mid_block.attentions.0", ch: chs[chs.length - 1] });
  layout.up_block_types.forEach((type, i) => {
    if (!crossAttn(type)) return;
    for (let j = 0; j <= layout.layers_per_block; j++) {
      blocks.push({ path: `up_blocks.${i}.attentions.${j}`, ch: rev[i] });
    }
  });
  return blocks.flatMap(({ path, ch }) =>
    (["attn1", "attn2"] as const).flatMap((attn) =>
      (["to_q", "to_k", "to_v", "to_out.0"] as const).map((proj) => {
        const module = `${path}.transformer_blocks.0.${attn}.${proj}`;
        const fromContext = attn === "attn2" && (proj === "to_k" || proj === "to_v");
        return {
          module,
          inFeatures: fromContext ? layout.cross_attention_dim : ch,
          outFeatures: ch,
          downInput: `lora.${module}.down`,
          upInput: `lora.${module}.up`,
        };
      })
    )
  );
}

export interface RandomAdapterOptions {
  seed: number;
  rank: number;
  format: KeyFormat;
  /** Which targets get a LoRA (default: all). */
  only?: (target: LoraTarget) => boolean;
  alpha?: number;
  /** Standard deviation of the down and up entries, for all targets or per target. */
  magnitude?: number | ((target: LoraTarget) => number);
}

export function randomAdapter(targets: LoraTarget[], options: RandomAdapterOptions): Uint8Array {
  const { seed, rank, format, alpha, magnitude = 0.2 } = options;
  const tensors: Record<string, Tensor> = {};
  targets.filter(options.only ?? (() => true)).forEach((t, i) => {
    const m = typeof magnitude === "number" ? magnitude : magnitude(t);
    const down = {
      shape: [rank, t.inFeatures],
      data: gaussianNoise(seed + 2 * i, rank * t.inFeatures).map((v) => v * m),
    };
    const up = {
      shape: [t.outFeatures, rank],
      data: gaussianNoise(seed + 2 * i + 1, t.outFeatures * rank).map((v) => v * m),
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
