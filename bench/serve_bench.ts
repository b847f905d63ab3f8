/**
 * Serving benchmark: images/s and p50/p95 latency of POST /generate at concurrency 1, 4, 8, 16,
 * with continuous batching on and off, next to the raw batched UNet `session.run` ceiling at the
 * same rows per run. Everything runs in one process, one configuration after another per level,
 * so the ratios compare like with like on a noisy machine.
 *
 *   deno task bench [--steps 50] [--requests-per-level 16] [--levels 1,4,8,16] [--rounds 3]
 *
 * Each level runs `rounds` interleaved rounds (batched, unbatched, ceiling) and reports medians.
 */
import * as ort from "onnxruntime-node";
import { parseArgs } from "node:util";
import { median } from "./stats.ts";
import { closedLoop } from "./clients.ts";
import { loadConfig } from "../config.ts";
import { startServer } from "../server.ts";
import { loadServing } from "../engine/load.ts";
import { gaussianNoise } from "../pipeline/rng.ts";
import { packLoraFeeds } from "../loras/pack.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    steps: { type: "string", default: "50" },
    "requests-per-level": { type: "string", default: "16" },
    rounds: { type: "string", default: "3" },
    levels: { type: "string", default: "1,4,8,16" },
    model: { type: "string", default: new URL("../models/tiny-sd-shapes", import.meta.url).pathname },
  },
});
const steps = Number(values.steps);
const levels = values.levels!.split(",").map(Number);
const modelDir = values.model!;

type LevelResult = Pick<Awaited<ReturnType<typeof closedLoop>>, "imagesPerSecond" | "p50" | "p95">;

function loadLevel(url: string, concurrency: number, total: number): Promise<LevelResult> {
  return closedLoop(url, concurrency, total, (i) => ({
    prompt: `a large red circle on a blue background`,
    seed: i,
    steps,
  }));
}

/** Raw UNet throughput at `rows` rows per run, as images/s for `steps` guided steps per image. */
async function rawUnet(
  session: ort.InferenceSession,
  rows: number,
  hidden: number,
  runs: number,
): Promise<number> {
  // The server's own UNet session: the LoRA-ready graph, fed no adapters, as the server feeds it.
  const feeds = {
    ...packLoraFeeds(ceilingModel.loraTargets, new Array(rows).fill([])),
    sample: new ort.Tensor("float32", gaussianNoise(1, rows * 4 * 8 * 8), [rows, 4, 8, 8]),
    timestep: new ort.Tensor("int64", new BigInt64Array(rows).fill(500n), [rows]),
    encoder_hidden_states: new ort.Tensor("float32", gaussianNoise(2, rows * 77 * hidden), [
      rows,
      77,
      hidden,
    ]),
  };
  for (let i = 0; i < 3; i++) await session.run(feeds);
  const t0 = performance.now();
  for (let i = 0; i < runs; i++) await session.run(feeds);
  const rowsPerSecond = (rows * runs) / ((performance.now() - t0) / 1000);
  return rowsPerSecond / (2 * steps);
}

const servers = {
  batched: await startServer(
    loadConfig({ PORT: "0", HOST: "127.0.0.1", MODEL: modelDir, MAX_CONCURRENT_REQUESTS: "64" }),
    { quiet: true },
  ),
  unbatched: await startServer(
    loadConfig({
      PORT: "0",
      HOST: "127.0.0.1",
      MODEL: modelDir,
      BATCHING: "off",
      MAX_CONCURRENT_REQUESTS: "64",
    }),
    { quiet: true },
  ),
};
// The ceiling's own copy of the served model (the servers' engines run in their workers).
const { model: ceilingModel } = await loadServing(loadConfig({ MODEL: modelDir }));
const unet = ceilingModel.sessions.unet;
const hidden = ceilingModel.info.hiddenSize;

const rows: string[] = [];
const summary: Record<number, { batched: LevelResult; unbatched: LevelResult; ceiling: number }> = {};
/** Per-round results combined: throughput and latency percentiles by median over rounds. */
function medianOf(results: LevelResult[]): LevelResult {
  return {
    imagesPerSecond: median(results.map((r) => r.imagesPerSecond)),
    p50: median(results.map((r) => r.p50)),
    p95: median(results.map((r) => r.p95)),
  };
}

for (const level of levels) {
  const total = Math.max(Number(values["requests-per-level"]), level * 2);
  await loadLevel(servers.batched.url, level, level); // warm-up
  await loadLevel(servers.unbatched.url, level, level);
  // Interleaved rounds: the machine's noise falls on all three measurements alike.
  const rounds = { batched: [] as LevelResult[], unbatched: [] as LevelResult[], ceiling: [] as number[] };
  for (let r = 0; r < Number(values.rounds); r++) {
    rounds.batched.push(await loadLevel(servers.batched.url, level, total));
    rounds.unbatched.push(await loadLevel(servers.unbatched.url, level, total));
    rounds.ceiling.push(await rawUnet(unet, 2 * level, hidden, Math.max(20, 400 / level)));
  }
  const batched = medianOf(rounds.batched), unbatched = medianOf(rounds.unbatched);
  const ceiling = median(rounds.ceiling);
  summary[level] = { batched, unbatched, ceiling };
  rows.push(
    `| ${level} | ${batched.imagesPerSecond.toFixed(2)} | ${batched.p50.toFixed(0)} / ${
      batched.p95.toFixed(0)
    } | ` +
      `${unbatched.imagesPerSecond.toFixed(2)} | ${unbatched.p50.toFixed(0)} / ${
        unbatched.p95.toFixed(0)
      } | ` +
      `${ceiling.toFixed(2)} | ${(batched.imagesPerSecond / unbatched.imagesPerSecond).toFixed(2)}x | ` +
      `${(batched.imagesPerSecond / ceiling).toFixed(2)}x |`,
  );
  console.error(rows.at(-1));
}
await servers.batched.close();
await servers.unbatched.close();
await ceilingModel.release();

console.log(
  `\nPOST /generate, ${steps} DDIM steps, guidance 7.5, 64x64, ${modelDir.split("/").pop()}; ` +
    `${navigator.hardwareConcurrency} CPU threads, onnxruntime-node CPU; median of ${values.rounds} interleaved rounds\n`,
);
console.log(
  "| concurrency | batched img/s | batched p50 / p95 ms | unbatched img/s | unbatched p50 / p95 ms | raw UNet ceiling img/s | batched / unbatched | batched / ceiling |",
);
console.log("|---|---|---|---|---|---|---|---|");
console.log(rows.join("\n"));
