/**
 * LoRA benchmark, side by side in one run:
 * - latency of one request with a warm adapter vs with none (and the first request of a cold
 *   adapter fetched from a loopback hub);
 * - throughput at concurrency 8 with 8 different adapters vs 8 requests sharing one adapter.
 *
 *   deno task bench:lora [--steps 50] [--rounds 6]
 */
import { parseArgs } from "node:util";
import { loadConfig } from "../config.ts";
import { startServer } from "../server.ts";
import { FakeHub } from "../support/hub_server.ts";
import { randomAdapter } from "../support/random_adapter.ts";
import { findLoraTargets } from "../loras/graph_rewrite.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    steps: { type: "string", default: "50" },
    rounds: { type: "string", default: "6" },
    model: { type: "string", default: new URL("../models/tiny-sd-shapes", import.meta.url).pathname },
  },
});
const steps = Number(values.steps), rounds = Number(values.rounds);
const targets = findLoraTargets(await Deno.readFile(`${values.model}/unet/model.onnx`));
const hub = new FakeHub();
for (let i = 0; i < 10; i++) {
  await hub.addCommit(`bench/lora-${i}`, {
    "lora.safetensors": randomAdapter(targets, {
      seed: 1000 * i,
      rank: 8,
      format: "legacy-attention-processor",
    }),
  });
}
const cache = await Deno.makeTempDir();
const server = await startServer(
  loadConfig({
    PORT: "0",
    HOST: "127.0.0.1",
    MODEL: values.model!,
    HF_ENDPOINT: hub.url,
    HF_HUB_CACHE: cache,
    LORA_BUNDLED_CACHE: "",
    CACHE_DIR: cache,
  }),
  { quiet: true },
);

async function request(lora?: string): Promise<number> {
  const t0 = performance.now();
  const res = await fetch(`${server.url}/generate`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      prompt: "a small blue circle on a white background",
      steps,
      seed: 1,
      ...(lora ? { lora: { repo: lora } } : {}),
    }),
  });
  if (res.status !== 200) throw new Error(`${res.status} ${await res.text()}`);
  await res.arrayBuffer();
  return performance.now() - t0;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

await request(); // warm-up
const cold = await request("bench/lora-9");
const none: number[] = [], warm: number[] = [];
for (let i = 0; i < rounds * 2; i++) {
  none.push(await request());
  warm.push(await request("bench/lora-9"));
}
for (let i = 0; i < 8; i++) await request(`bench/lora-${i}`); // fetch the 8 adapters
const throughput = async (adapterOf: (i: number) => string) => {
  const t0 = performance.now();
  for (let r = 0; r < rounds; r++) {
    await Promise.all(Array.from({ length: 8 }, (_, i) => request(adapterOf(i))));
  }
  return (rounds * 8) / ((performance.now() - t0) / 1000);
};
const shared: number[] = [], distinct: number[] = [];
for (let r = 0; r < 2; r++) { // alternate to spread machine noise over both
  shared.push(await throughput(() => "bench/lora-0"));
  distinct.push(await throughput((i) => `bench/lora-${i}`));
}
await server.close();
await hub.close();
await Deno.remove(cache, { recursive: true });

const sharedRate = shared.reduce((a, b) => a + b) / shared.length,
  distinctRate = distinct.reduce((a, b) => a + b) / distinct.length;
console.log(
  `\nLoRA, ${steps} DDIM steps, rank-8 adapters on all ${targets.length} attention projections; ` +
    `${navigator.hardwareConcurrency} CPU threads\n`,
);
console.log("| measure | value |\n|---|---|");
console.log(`| latency, no adapter (median of ${none.length}) | ${median(none).toFixed(0)} ms |`);
console.log(`| latency, warm adapter (median of ${warm.length}) | ${median(warm).toFixed(0)} ms |`);
console.log(`| warm adapter / none | ${(median(warm) / median(none)).toFixed(3)}x |`);
console.log(`| first request, cold adapter from the loopback hub | ${cold.toFixed(0)} ms |`);
console.log(`| concurrency 8, one shared adapter | ${sharedRate.toFixed(2)} img/s |`);
console.log(`| concurrency 8, 8 different adapters | ${distinctRate.toFixed(2)} img/s |`);
console.log(`| different / shared | ${(distinctRate / sharedRate).toFixed(3)}x |`);
