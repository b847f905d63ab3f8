/**
 * What the engine's worker and the pipeline cost: the same generation through the engine client (a
 * worker, the protocol, structured clone) and through the same task in this process, next to the
 * UNet's own runs alone (the in-process session, fed as the pipeline feeds it, `steps` runs per
 * generation), interleaved so the machine's noise falls on all three alike. No HTTP.
 *
 *   deno task bench:engine [--steps 50] [--requests 10] [--rounds 5]
 */
import { parseArgs } from "node:util";
import { loadConfig } from "../config.ts";
import { loadServing } from "../engine/load.ts";
import { EngineClient } from "../engine/client.ts";
import { Tasks } from "../engine/tasks.ts";
import { median } from "./stats.ts";
import * as ort from "onnxruntime-node";
import { packLoraFeeds } from "../loras/pack.ts";
import { gaussianNoise } from "../pipeline/rng.ts";

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

// The UNet alone: 2 rows (conditional and unconditional) per run, as a guided generation runs it.
const rows = 2, side = model.info.nativeWidth / 8, hidden = model.info.hiddenSize;
const unetFeeds = {
  ...packLoraFeeds(model.loraTargets, new Array(rows).fill([])),
  sample: new ort.Tensor("float32", gaussianNoise(1, rows * 4 * side * side), [rows, 4, side, side]),
  timestep: new ort.Tensor("int64", new BigInt64Array(rows).fill(500n), [rows]),
  encoder_hidden_states: new ort.Tensor("float32", gaussianNoise(2, rows * 77 * hidden), [rows, 77, hidden]),
};
const unetRuns = async () => {
  for (let i = 0; i < input.steps; i++) await model.sessions.unet.run(unetFeeds);
};

/** Mean ms per generation over `requests` back-to-back ones, after two to warm up. */
async function msPerRequest(generate: () => Promise<unknown>): Promise<number> {
  for (let i = 0; i < 2; i++) await generate();
  const started = performance.now();
  for (let i = 0; i < Number(values.requests); i++) await generate();
  return (performance.now() - started) / Number(values.requests);
}

const ratios: number[] = [], ofRaw: number[] = [];
console.log(`${values.steps}-step generation, ${values.requests} per round\n`);
console.log(
  "| round | UNet runs alone ms | in process ms | engine worker ms | in process / worker | UNet alone / worker |",
);
console.log("|---|---|---|---|---|---|");
for (let round = 1; round <= Number(values.rounds); round++) {
  const raw = await msPerRequest(unetRuns);
  const local = await msPerRequest(() => inProcess.generate(input, {}));
  const worker = await msPerRequest(() => engine.call("generate", input));
  ratios.push(local / worker);
  ofRaw.push(raw / worker);
  console.log(
    `| ${round} | ${raw.toFixed(1)} | ${local.toFixed(1)} | ${worker.toFixed(1)} | ${
      (local / worker).toFixed(2)
    } | ${(raw / worker).toFixed(2)} |`,
  );
}
console.log(
  `\nmedian in process / worker: ${median(ratios).toFixed(2)}; UNet alone / worker: ${
    median(ofRaw).toFixed(2)
  }`,
);
await engine.close();
await model.release();
