/** Closed-loop clients on POST /generate, shared by the serving benchmarks. */
import { percentile } from "./stats.ts";

export interface LevelResult {
  imagesPerSecond: number;
  /** Latency percentiles of the requests, ms. */
  p50: number;
  p95: number;
  requests: number;
  seconds: number;
}

/**
 * `concurrency` clients send `total` requests between them, each sending its next as soon as its
 * last one is answered; `body(i)` is request i's JSON. Any status but 200 throws, naming it.
 */
export async function closedLoop(
  url: string,
  concurrency: number,
  total: number,
  body: (i: number) => Record<string, unknown>,
  signal?: AbortSignal,
): Promise<LevelResult> {
  const latencies: number[] = [];
  let next = 0;
  const started = performance.now();
  const client = async () => {
    while (next < total) {
      const i = next++;
      const t0 = performance.now();
      const res = await fetch(`${url}/generate`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body(i)),
        signal,
      });
      if (res.status !== 200) throw new Error(`status ${res.status}: ${await res.text()}`);
      await res.arrayBuffer();
      latencies.push(performance.now() - t0);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, client));
  const seconds = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  return {
    imagesPerSecond: total / seconds,
    p50: percentile(latencies, 0.5),
    p95: percentile(latencies, 0.95),
    requests: total,
    seconds,
  };
}
