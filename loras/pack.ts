/**
 * Packs the adapters of every row of a batch into the rewritten UNet's LoRA inputs:
 * D [B, in, R] and U [B, R, out] per target, where a row's adapters are stacked along R (each
 * U block already multiplied by its scale), rows without adapters are zero, and R is the largest
 * stacked rank in the batch (at least 1).
 */
import * as ort from "onnxruntime-node";
import type { Adapter } from "./adapter.ts";
import type { LoraTarget } from "./graph_rewrite.ts";

export interface AppliedAdapter {
  adapter: Adapter;
  scale: number;
}

/** The adapters applied to one row (empty: the base model). */
export type RowAdapters = readonly AppliedAdapter[];

export function compositionKey(rows: readonly RowAdapters[]): string {
  return rows.map((row) => row.map((a) => `${a.adapter.id}*${a.scale}`).join("+")).join("|");
}

export function packLoraFeeds(
  targets: readonly LoraTarget[],
  rows: readonly RowAdapters[],
): Record<string, ort.Tensor> {
  const batch = rows.length;
  const rank = Math.max(1, ...rows.map((row) => row.reduce((sum, a) => sum + a.adapter.rank, 0)));
  const feeds: Record<string, ort.Tensor> = {};
  for (const target of targets) {
    const { inFeatures: nIn, outFeatures: nOut } = target;
    const down = new Float32Array(batch * nIn * rank);
    const up = new Float32Array(batch * rank * nOut);
    rows.forEach((row, b) => {
      let offset = 0;
      for (const { adapter, scale } of row) {
        const m = adapter.modules.get(target.module);
        if (m) {
          for (let i = 0; i < nIn; i++) {
            const dst = (b * nIn + i) * rank + offset;
            down.set(m.downT.subarray(i * m.rank, (i + 1) * m.rank), dst);
          }
          for (let k = 0; k < m.rank; k++) {
            const dst = (b * rank + offset + k) * nOut;
            for (let o = 0; o < nOut; o++) up[dst + o] = scale * m.upT[k * nOut + o];
          }
        }
        offset += adapter.rank;
      }
    });
    feeds[target.downInput] = new ort.Tensor("float32", down, [batch, nIn, rank]);
    feeds[target.upInput] = new ort.Tensor("float32", up, [batch, rank, nOut]);
  }
  return feeds;
}
