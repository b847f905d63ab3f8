/**
 * What the engine's worker costs: the same generation through the engine client (a worker, the
 * protocol, structured clone) and through the same task in this process, interleaved, so the
 * machine's noise falls on both alike. No HTTP.
 *
 *   deno task bench:engine [--steps 50] [--requests 10] [--rounds 5]
 */
import { parseArgs } from "node:util";
import { loadConfig } from "../config.ts";
import { loadServing } from "../engine/load.ts";
import { EngineClient } from "../engine/client.ts";
import { Tasks } from "../engine/tasks.ts";
import { median } from "./stats.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    steps: { type: "string", default: "50" },
    requests: { type: "string", default: "10" },
    rounds: { type: "string", default: "5" },
  },
});
const config = loadConfig({ ...Deno.env.toObject(), PORT: "0" });
const { model, adapters } = await loadServing(config);
const inProcess = new Tasks(model, adapters);
const engine = await EngineClient.start(config);
const input = {
  prompt: "a large red circle on a blue background",
  negativePrompt: "",
  width: model.info.nativeWidth,
  height: model.info.nativeHeight,
  steps: Number(values.steps),
  guidanceScale: 7.5,
  seed: 1,
  scheduler: "ddim" as const,
  numImages: 1,
  lora: [],
};

/** Mean ms per generation over `requests` back-to-back ones, after two to warm up. */
async function msPerRequest(generate: () => Promise<unknown>): Promise<number> {
  for (let i = 0; i < 2; i++) await generate();
  const started = performance.now();
  for (let i = 0; i < Number(values.requests); i++) await generate();
  return (performance.now() - started) / Number(values.requests);
}

const ratios: number[] = [];
console.log(`${values.steps}-step generation, ${values.requests} per round\n`);
console.log("| round | in process ms | engine worker ms | in process / worker |");
console.log("|---|---|---|---|");
for (let round = 1; round <= Number(values.rounds); round++) {
  const local = await msPerRequest(() => inProcess.generate(input, {}));
  const worker = await msPerRequest(() => engine.call("generate", input));
  ratios.push(local / worker);
  console.log(`| ${round} | ${local.toFixed(1)} | ${worker.toFixed(1)} | ${(local / worker).toFixed(2)} |`);
}
console.log(`\nmedian in process / worker: ${median(ratios).toFixed(2)}`);
await engine.close();
await model.release();
