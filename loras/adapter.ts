/**
 * A parsed adapter checked against the loaded UNet's LoRA targets: every module it applies to
 * exists and its shapes fit; what it cannot apply is reported. Errors say why, for a 422.
 */
import { type KeyFormat, mapKeys } from "./keys.ts";
import { parseSafetensors, SafetensorsError } from "./safetensors.ts";
import type { LoraTarget } from "./graph_rewrite.ts";

export class AdapterError extends Error {
  constructor(readonly code: "invalid_adapter" | "adapter_mismatch", message: string) {
    super(message);
  }
}

export interface AdapterSource {
  repo: string;
  file: string;
  revision: string;
  commit: string;
}

export interface AdapterModule {
  rank: number;
  /** down^T laid out [in, rank]: the per-row D block. */
  downT: Float32Array;
  /** factor * up^T laid out [rank, out]: the per-row U block before the request's scale. */
  upT: Float32Array;
}

export interface Adapter {
  /** Stable identity: repo@commit:file. */
  id: string;
  source: AdapterSource;
  format: KeyFormat;
  modules: Map<string, AdapterModule>;
  rank: number;
  bytes: number;
  ignored: string[];
}

export function buildAdapter(
  source: AdapterSource,
  file: Uint8Array,
  targets: Map<string, LoraTarget>,
): Adapter {
  let parsed;
  try {
    parsed = parseSafetensors(file);
  } catch (error) {
    if (error instanceof SafetensorsError) {
      throw new AdapterError("invalid_adapter", `${source.file}: ${error.message}`);
    }
    throw error;
  }
  const mapped = mapKeys(parsed.tensors, targets.keys());
  const modules = new Map<string, AdapterModule>();
  const ignored = [...mapped.ignored];
  let bytes = 0, rank = 0;
  for (const [module, { down, up, alpha }] of mapped.modules) {
    const target = targets.get(module);
    if (!target) {
      ignored.push(`${module} (not an attention projection of this UNet)`);
      continue;
    }
    const [r, inFeatures] = down.shape.length === 2 ? down.shape : [NaN, NaN];
    const [outFeatures, upRank] = up.shape.length === 2 ? up.shape : [NaN, NaN];
    if (inFeatures !== target.inFeatures || outFeatures !== target.outFeatures || r !== upRank || !(r > 0)) {
      throw new AdapterError(
        "adapter_mismatch",
        `${module}: down [${down.shape}] and up [${up.shape}] do not fit a ${target.inFeatures} -> ${target.outFeatures} projection`,
      );
    }
    const factor = alpha === undefined ? 1 : alpha / r;
    const downT = new Float32Array(inFeatures * r), upT = new Float32Array(r * outFeatures);
    for (let k = 0; k < r; k++) {
      for (let i = 0; i < inFeatures; i++) downT[i * r + k] = down.data[k * inFeatures + i];
      for (let o = 0; o < outFeatures; o++) upT[k * outFeatures + o] = factor * up.data[o * r + k];
    }
    modules.set(module, { rank: r, downT, upT });
    bytes += (downT.length + upT.length) * 4;
    rank = Math.max(rank, r);
  }
  if (modules.size === 0) {
    const sample = [...mapped.modules.keys(), ...mapped.ignored].slice(0, 3).join(", ") || "no tensors";
    throw new AdapterError(
      "adapter_mismatch",
      `${source.file} (${mapped.format} format) matches no attention projection of the loaded UNet; it has: ${sample}`,
    );
  }
  return {
    id: `${source.repo}@${source.commit}:${source.file}`,
    source,
    format: mapped.format,
    modules,
    rank,
    bytes,
    ignored,
  };
}
