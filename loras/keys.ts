/**
 * LoRA key formats, mapped to diffusers UNet module paths:
 * - legacy attention processors (the published Smooth-LoRA):
 *     `down_blocks.0. ... .attn1.processor.to_q_lora.down.weight` / `.up.weight`; `to_out_lora` is `to_out.0`
 * - diffusers / PEFT: `unet.<module>.lora_A.weight` / `lora_B.weight` (also `.lora.down` / `.lora.up`), optional `.alpha`
 * - kohya: `lora_unet_<module with _ for .>.lora_down.weight` / `.lora_up.weight` / `.alpha`
 * The effective update is W' = W + scale * factor * (up @ down), factor = alpha / rank where alpha is given.
 */
import type { Tensor } from "./safetensors.ts";

export type KeyFormat = "legacy-attention-processor" | "diffusers-peft" | "kohya";

export interface LoraModule {
  down: Tensor; // [rank, in]
  up: Tensor; // [out, rank]
  alpha?: number;
}

export interface MappedAdapter {
  format: KeyFormat;
  modules: Map<string, LoraModule>;
  /** Keys that are not UNet LoRA weights (text encoder, unknown), reported, not applied. */
  ignored: string[];
}

type Part = "down" | "up" | "alpha";

const LEGACY = /^(?:unet\.)?(.+)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$/;
const PEFT =
  /^(?:base_model\.model\.)?(?:unet\.)?(.+)\.(?:(lora_A|lora_B)\.weight|lora\.(down|up)\.weight|(alpha))$/;
const KOHYA = /^lora_unet_(.+)\.(?:(lora_down|lora_up)\.weight|(alpha))$/;
const UNET_ROOT = /^(down_blocks|mid_block|up_blocks|conv_in|conv_out|time_embedding)/;

function detectFormat(keys: string[]): KeyFormat {
  if (keys.some((k) => LEGACY.test(k))) return "legacy-attention-processor";
  if (keys.some((k) => k.startsWith("lora_unet_") || k.startsWith("lora_te"))) return "kohya";
  return "diffusers-peft";
}

/**
 * `kohyaModule` turns a kohya name (underscores) back into a module path; it needs the model's
 * module paths because module names contain underscores themselves (`transformer_blocks`).
 */
export function mapKeys(tensors: Map<string, Tensor>, knownModules: Iterable<string>): MappedAdapter {
  const keys = [...tensors.keys()];
  const format = detectFormat(keys);
  const kohyaIndex = new Map<string, string>();
  for (const m of knownModules) kohyaIndex.set(m.replaceAll(".", "_"), m);
  const parts = new Map<string, Partial<Record<Part, Tensor>>>();
  const ignored: string[] = [];
  for (const key of keys) {
    let module: string | undefined, part: Part | undefined;
    if (format === "legacy-attention-processor") {
      const m = LEGACY.exec(key);
      if (m) [module, part] = [`${m[1]}.${m[2] === "to_out" ? "to_out.0" : m[2]}`, m[3] as Part];
    } else if (format === "kohya") {
      const m = KOHYA.exec(key);
      if (m) {
        module = kohyaIndex.get(m[1]);
        part = m[3] ? "alpha" : m[2] === "lora_down" ? "down" : "up";
      }
    } else {
      const m = PEFT.exec(key);
      if (m && !key.startsWith("text_encoder") && UNET_ROOT.test(m[1])) {
        module = m[1];
        part = m[4] ? "alpha" : m[2] ? (m[2] === "lora_A" ? "down" : "up") : (m[3] as Part);
      }
    }
    if (!module || !part) {
      ignored.push(key);
      continue;
    }
    const entry = parts.get(module) ?? {};
    entry[part] = tensors.get(key)!;
    parts.set(module, entry);
  }
  const modules = new Map<string, LoraModule>();
  for (const [module, p] of parts) {
    if (!p.down || !p.up) {
      ignored.push(`${module} (has ${Object.keys(p).join(", ")}; needs both down and up)`);
      continue;
    }
    modules.set(module, { down: p.down, up: p.up, alpha: p.alpha ? p.alpha.data[0] : undefined });
  }
  return { format, modules, ignored };
}
