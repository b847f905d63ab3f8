/**
 * Evaluates the served model, optionally with LoRA adapters, on fixed held-out work, so that models
 * and adapters compare on the same prompts, seeds and drawings:
 * - istd: smoothness (pipeline/istd.ts), pixels in [0, 1]; lower is smoother; with the mean adjacent
 *   distance, ISTD / mean (scale-free) and the seed diversity (distance between the two seeds' images);
 * - accuracy: all-attributes and per-attribute accuracy of generated images, read by the training
 *   tools' evaluator;
 * - inversion: PSNR of DDIM inversion + reconstruction of real drawings, and the VAE's bound.
 * The work runs in process through the engine's task entry points (engine/tasks.ts), as the
 * server's requests do.
 *
 *   deno task evaluate [--lora org/name[@revision]]... [--scale 1] [--metrics istd,accuracy,inversion]
 *                      [--prompts 100] [--steps 50] [--json FILE]
 *   deno task istd [--lora ...]        (the same with --metrics istd)
 *
 * The model and the Hub settings come from the same environment as the server (MODEL, HF_*).
 */
import { parseArgs } from "node:util";
import { loadConfig } from "../config.ts";
import { loadServing } from "../engine/load.ts";
import { type InterpolateOutput, Tasks } from "../engine/tasks.ts";
import { istdOf } from "../pipeline/istd.ts";
import { decodeImage, encodeImage } from "../pipeline/image.ts";
import type { AdapterSpec } from "../loras/registry.ts";
import { runPython } from "../support/python.ts";
import { forEachConcurrently } from "../pipeline/concurrency.ts";

const METRICS = ["istd", "accuracy", "inversion"] as const;
type Metric = typeof METRICS[number];
const HELD_OUT = new URL("../tests/fixtures/tiny-sd-shapes/held_out.json", import.meta.url).pathname;
const TRAINING = new URL("../training/", import.meta.url).pathname;
const GUIDANCE = 7.5;

const { values } = parseArgs({
  args: Deno.args,
  options: {
    lora: { type: "string", multiple: true, default: [] },
    scale: { type: "string", default: "1" },
    metrics: { type: "string", default: METRICS.join(",") },
    prompts: { type: "string", default: "100" },
    frames: { type: "string", default: "11" },
    steps: { type: "string", default: "50" },
    "seed-base": { type: "string", default: "2000000000" },
    json: { type: "string" },
  },
});
const metrics = values.metrics!.split(",") as Metric[];
const unknown = metrics.filter((m) => !METRICS.includes(m));
if (unknown.length) throw new Error(`unknown metrics ${unknown.join(", ")}; known: ${METRICS.join(", ")}`);
const count = Number(values.prompts);
const steps = Number(values.steps);
const heldOut: [string, number][] = JSON.parse(await Deno.readTextFile(HELD_OUT));
if (count > heldOut.length) throw new Error(`--prompts ${count}: only ${heldOut.length} held-out pairs`);
const pairs = heldOut.slice(0, count);

function mean(values: number[]): number {
  return values.reduce((s, v) => s + v, 0) / values.length;
}

/** Per prompt, the interpolation between two fixed seeds' noises with that prompt at both ends. */
async function istd(tasks: Tasks, lora: AdapterSpec[]) {
  const base = Number(values["seed-base"]);
  const { nativeHeight, nativeWidth } = tasks.model.info;
  const runs = new Array<InterpolateOutput>(pairs.length);
  await forEachConcurrently(pairs.length, 8, async (i) => {
    const prompt = pairs[i][0];
    runs[i] = await tasks.interpolate({
      from: { prompt, seed: base + 2 * i },
      to: { prompt, seed: base + 2 * i + 1 },
      shape: { rows: 1, height: nativeHeight / 8, width: nativeWidth / 8 },
      frames: Number(values.frames),
      steps,
      method: "ddim",
      guidanceScale: GUIDANCE,
      lora,
    }, {});
  });
  const result = istdOf(runs);
  return {
    istd: result.istd,
    mean_adjacent_distance: result.meanDistance,
    istd_over_mean: result.istdOverMean,
    seed_diversity: result.endpointDistance,
    frames: Number(values.frames),
    pixel_range: "[0, 1]",
  };
}

async function accuracy(tasks: Tasks, lora: AdapterSpec[], dir: string) {
  await Deno.mkdir(`${dir}/generated`);
  await forEachConcurrently(pairs.length, 16, async (i) => {
    const [prompt, seed] = pairs[i];
    const { images } = await tasks.generate({
      prompt,
      negativePrompt: "",
      width: tasks.model.info.nativeWidth,
      height: tasks.model.info.nativeHeight,
      steps,
      guidanceScale: GUIDANCE,
      seed,
      scheduler: "ddim",
      numImages: 1,
      lora,
    }, {});
    await Deno.writeFile(`${dir}/generated/${i}.png`, await encodeImage(images[0].image, "png"));
  });
  await Deno.writeTextFile(`${dir}/pairs.json`, JSON.stringify(pairs));
  const scores = JSON.parse(
    await runPython([
      `${TRAINING}evaluator.py`,
      "--pairs",
      `${dir}/pairs.json`,
      "--images",
      `${dir}/generated`,
    ]),
  );
  return { accuracy_all: scores.all, accuracy: scores };
}

async function inversion(tasks: Tasks, lora: AdapterSpec[], dir: string) {
  await runPython([
    `${TRAINING}render.py`,
    "--pairs",
    HELD_OUT,
    "--count",
    String(count),
    "--out",
    `${dir}/real`,
  ]);
  const reconstruction: number[] = [], vaeBound: number[] = [];
  await forEachConcurrently(pairs.length, 16, async (i) => {
    const image = await decodeImage(await Deno.readFile(`${dir}/real/${i}.png`));
    const { metrics } = await tasks.invert({
      image,
      prompt: pairs[i][0],
      steps,
      method: "ddim",
      guidanceScale: 1,
      lora,
    }, {});
    reconstruction[i] = metrics.psnr;
    vaeBound[i] = metrics.upper_bound.psnr;
  });
  return { inversion_psnr_db: mean(reconstruction), vae_bound_psnr_db: mean(vaeBound) };
}

const config = loadConfig();
const { location, model, adapters: registry } = await loadServing(config);
const tasks = new Tasks(model, registry);
const specs: AdapterSpec[] = values.lora!.map((spec) => {
  const [repo, revision = "main"] = spec.split("@");
  return { repo, revision, scale: Number(values.scale) };
});
// resolved once up front: named in the report, and held for the whole run (each task holds them too)
const { applied, release } = await registry.acquire(specs);
const scratch = await Deno.makeTempDir({ prefix: "evaluate-" });
const report: Record<string, unknown> = {
  model: location.name,
  adapters: applied.map((a) => `${a.adapter.id} x${a.scale}`).join(", ") || "none",
  prompts: count,
  steps,
  guidance: GUIDANCE,
};
try {
  for (const metric of metrics) {
    const started = performance.now();
    const result = metric === "istd"
      ? await istd(tasks, specs)
      : metric === "accuracy"
      ? await accuracy(tasks, specs, scratch)
      : await inversion(tasks, specs, scratch);
    Object.assign(report, result, {
      [`${metric}_seconds`]: Math.round((performance.now() - started) / 1000),
    });
    console.log(JSON.stringify({ metric, ...result, seconds: report[`${metric}_seconds`] }));
  }
} finally {
  release();
  await model.release();
  await Deno.remove(scratch, { recursive: true });
}
console.log(
  `adapters: ${report.adapters}; ${count} held-out prompts, ${steps} DDIM steps, guidance ${GUIDANCE}` +
    (report.istd !== undefined
      ? `; ISTD ${(report.istd as number).toFixed(4)} (pixels in [0, 1]), mean adjacent distance ${
        (report.mean_adjacent_distance as number).toFixed(3)
      }, ISTD / mean ${(report.istd_over_mean as number).toFixed(3)}, seed diversity ${
        (report.seed_diversity as number).toFixed(3)
      }`
      : "") +
    (report.accuracy_all !== undefined
      ? `; all-attributes ${(100 * (report.accuracy_all as number)).toFixed(1)}%`
      : "") +
    (report.inversion_psnr_db !== undefined
      ? `; DDIM inversion PSNR ${(report.inversion_psnr_db as number).toFixed(2)} dB (VAE bound ${
        (report.vae_bound_psnr_db as number).toFixed(2)
      })`
      : ""),
);
if (values.json) await Deno.writeTextFile(values.json, JSON.stringify(report, null, 2) + "\n");
