/** Runs `fn` over 0..n-1 with at most `width` calls in flight, so their model calls can share batched runs. */
export async function forEachConcurrently(
  n: number,
  width: number,
  fn: (i: number) => Promise<void>,
): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < n) await fn(next++);
  };
  await Promise.all(Array.from({ length: Math.min(width, n) }, worker));
}
