/**
 * Prints ISTD (lower is smoother) for the served model, optionally with LoRA adapters, on fixed
 * prompts (the held-out captions) and fixed noises (seed pairs), so numbers compare across models.
 *
 *   deno task istd [--lora org/name[@revision]] [--scale 1] [--prompts 100] [--frames 11] [--steps 50]
 *
 * The model and the Hub settings come from the same environment as the server (MODEL, HF_*).
 */
import { parseArgs } from "node:util";
import { loadConfig } from "../config.ts";
import { loadServing } from "../server.ts";
import { measureIstd } from "../pipeline/istd.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    lora: { type: "string", multiple: true, default: [] },
    scale: { type: "string", default: "1" },
    prompts: { type: "string", default: "100" },
    frames: { type: "string", default: "11" },
    steps: { type: "string", default: "50" },
    guidance: { type: "string", default: "7.5" },
    "seed-base": { type: "string", default: "2000000000" },
  },
});
const config = loadConfig();
const { location, model, adapters: registry } = await loadServing(config);
const specs = values.lora!.map((spec) => {
  const [repo, revision = "main"] = spec.split("@");
  return { repo, revision, scale: Number(values.scale) };
});
const { applied, release } = await registry.acquire(specs);
const heldOut: [string, number][] = JSON.parse(
  await Deno.readTextFile(new URL("../tests/fixtures/tiny-sd-shapes/held_out.json", import.meta.url)),
);
const count = Number(values.prompts);
const prompts = Array.from({ length: count }, (_, i) => heldOut[i % heldOut.length][0]);
const base = Number(values["seed-base"]);
const started = performance.now();
const result = await measureIstd(model, {
  prompts,
  seeds: prompts.map((_, i) => [base + 2 * i, base + 2 * i + 1]),
  frames: Number(values.frames),
  steps: Number(values.steps),
  guidanceScale: Number(values.guidance),
  adapters: applied,
});
release();
await model.release();
const adapters = applied.map((a) => `${a.adapter.id} x${a.scale}`).join(", ") || "none";
console.log(
  `ISTD ${
    result.istd.toFixed(4)
  } (pixels in [0, 1]; ${count} prompts x ${values.frames} frames, ${values.steps} DDIM steps, ` +
    `guidance ${values.guidance}; model ${location.name}; adapters: ${adapters}; ${
      ((performance.now() - started) / 1000).toFixed(0)
    } s)`,
);
