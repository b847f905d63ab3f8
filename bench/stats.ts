/** The p-quantile of ascending `sorted` (nearest rank below); NaN when empty. */
export function percentile(sorted: number[], p: number): number {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] : NaN;
}

/** The median of `values` (the upper middle for an even count), in any order. */
export function median(values: number[]): number {
  return percentile([...values].sort((a, b) => a - b), 0.5);
}
