/**
 * Load benchmark: closed-loop clients on POST /generate at rising concurrency, past the server's
 * admission limit, reporting throughput, p50/p95/p99 latency of completed requests and rejects.
 * Clients are well behaved: on 429 they wait the Retry-After the server sent, then try again.
 * Meanwhile a probe calls GET /health/live every 50 ms, as a liveness probe would: its latency
 * (p50, p99, max) says whether the server still answers while its cores run the model.
 *
 *   deno task bench:load [--limit 16] [--levels 1,2,4,8,16,32,64] [--seconds 15] [--steps 20]
 *
 * The server runs in this process on the embedded model with MAX_CONCURRENT_REQUESTS = --limit.
 */
import { parseArgs } from "node:util";
import { percentile } from "./stats.ts";
import { loadConfig } from "../config.ts";
import { startServer } from "../server.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    limit: { type: "string", default: "16" },
    levels: { type: "string", default: "1,2,4,8,16,32,64" },
    seconds: { type: "string", default: "15" },
    steps: { type: "string", default: "20" },
  },
});
const steps = Number(values.steps);
const seconds = Number(values.seconds);

interface LevelResult {
  concurrency: number;
  completed: number;
  rejected: number;
  imagesPerSecond: number;
  p50: number;
  p95: number;
  p99: number;
  retryAfter: Set<string>;
  healthP50: number;
  healthP99: number;
  healthMax: number;
}

async function runLevel(url: string, concurrency: number): Promise<LevelResult> {
  const latencies: number[] = [];
  const retryAfter = new Set<string>();
  let rejected = 0, seed = 0;
  const started = performance.now();
  const deadline = started + seconds * 1000;
  const client = async () => {
    while (performance.now() < deadline) {
      const t0 = performance.now();
      const res = await fetch(`${url}/generate`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ prompt: "a large red circle on a blue background", seed: seed++, steps }),
      });
      await res.arrayBuffer();
      if (res.status === 200) latencies.push(performance.now() - t0);
      else if (res.status === 429) {
        rejected++;
        const wait = res.headers.get("retry-after") ?? "1";
        retryAfter.add(wait);
        await new Promise((r) => setTimeout(r, Number(wait) * 1000));
      } else throw new Error(`unexpected status ${res.status}`);
    }
  };
  const health: number[] = [];
  const probe = async () => {
    while (performance.now() < deadline) {
      const t0 = performance.now();
      await (await fetch(`${url}/health/live`)).arrayBuffer();
      health.push(performance.now() - t0);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  await Promise.all([probe(), ...Array.from({ length: concurrency }, client)]);
  const elapsed = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  health.sort((a, b) => a - b);
  return {
    concurrency,
    completed: latencies.length,
    rejected,
    imagesPerSecond: latencies.length / elapsed,
    p50: percentile(latencies, 0.5),
    p95: percentile(latencies, 0.95),
    p99: percentile(latencies, 0.99),
    retryAfter,
    healthP50: percentile(health, 0.5),
    healthP99: percentile(health, 0.99),
    healthMax: health.at(-1)!,
  };
}

const server = await startServer(
  loadConfig({
    ...Deno.env.toObject(),
    PORT: "0",
    HOST: "127.0.0.1",
    MAX_CONCURRENT_REQUESTS: values.limit!,
  }),
  { quiet: true },
);
try {
  await runLevel(server.url, 2); // warm-up: sessions, arenas, first batch shapes
  console.log(
    `POST /generate, ${steps} DDIM steps, 64x64, admission limit ${values.limit}, ${seconds} s per level\n`,
  );
  console.log(
    "| clients | completed | images/s | p50 ms | p95 ms | p99 ms | rejected (429) | Retry-After s | /health/live p50 / p99 / max ms |",
  );
  console.log("|---|---|---|---|---|---|---|---|---|");
  for (const level of values.levels!.split(",").map(Number)) {
    const r = await runLevel(server.url, level);
    console.log(
      `| ${r.concurrency} | ${r.completed} | ${r.imagesPerSecond.toFixed(2)} | ${r.p50.toFixed(0)} | ${
        r.p95.toFixed(0)
      } | ${r.p99.toFixed(0)} | ${r.rejected} | ${[...r.retryAfter].join(", ") || "-"} | ${
        r.healthP50.toFixed(1)
      } / ${r.healthP99.toFixed(1)} / ${r.healthMax.toFixed(0)} |`,
    );
  }
} finally {
  await server.close();
}
