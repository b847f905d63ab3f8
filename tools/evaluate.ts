/**
 * Evaluates the served model, optionally with LoRA adapters, on fixed held-out work, so that models
 * and adapters compare on the same prompts, seeds and drawings:
 * - istd: smoothness (pipeline/istd.ts), pixels in [0, 1]; lower is smoother; with the mean adjacent
 *   distance, ISTD / mean (scale-free) and the seed diversity (distance between the two seeds' images);
 * - accuracy: all-attributes and per-attribute accuracy of generated images, read by the training
 *   tools' evaluator;
 * - inversion: PSNR of DDIM inversion + reconstruction of real drawings, and the VAE's bound.
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
import { measureIstd } from "../pipeline/istd.ts";
import { generate } from "../pipeline/generate.ts";
import { invertImage } from "../pipeline/invert.ts";
import { decodeImage, encodeImage } from "../pipeline/image.ts";
import { psnr } from "../pipeline/similarity.ts";
import type { DiffusionModel } from "../pipeline/model.ts";
import type { RowAdapters } from "../loras/pack.ts";
import { runPython } from "./python.ts";
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

async function istd(model: DiffusionModel, adapters: RowAdapters) {
  const base = Number(values["seed-base"]);
  const result = await measureIstd(model, {
    prompts: pairs.map(([caption]) => caption),
    seeds: pairs.map((_, i) => [base + 2 * i, base + 2 * i + 1]),
    frames: Number(values.frames),
    steps,
    guidanceScale: GUIDANCE,
    adapters,
  });
  return {
    istd: result.istd,
    mean_adjacent_distance: result.meanDistance,
    istd_over_mean: result.istdOverMean,
    seed_diversity: result.endpointDistance,
    frames: Number(values.frames),
    pixel_range: "[0, 1]",
  };
}

async function accuracy(model: DiffusionModel, adapters: RowAdapters, dir: string) {
  await Deno.mkdir(`${dir}/generated`);
  await forEachConcurrently(pairs.length, 16, async (i) => {
    const [prompt, seed] = pairs[i];
    const { images } = await generate(model, {
      prompt,
      negativePrompt: "",
      width: model.info.nativeWidth,
      height: model.info.nativeHeight,
      steps,
      guidanceScale: GUIDANCE,
      seed,
      scheduler: "ddim",
      numImages: 1,
      adapters,
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

async function inversion(model: DiffusionModel, adapters: RowAdapters, dir: string) {
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
    const result = await invertImage(model, {
      image,
      prompt: pairs[i][0],
      steps,
      method: "ddim",
      guidanceScale: 1,
      adapters,
    }, {});
    reconstruction[i] = psnr(result.reconstruction, image);
    vaeBound[i] = psnr(result.vaeReconstruction, image);
  });
  return { inversion_psnr_db: mean(reconstruction), vae_bound_psnr_db: mean(vaeBound) };
}

const config = loadConfig();
const { location, model, adapters: registry } = await loadServing(config);
const specs = values.lora!.map((spec) => {
  const [repo, revision = "main"] = spec.split("@");
  return { repo, revision, scale: Number(values.scale) };
});
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
      ? await istd(model, applied)
      : metric === "accuracy"
      ? await accuracy(model, applied, scratch)
      : await inversion(model, applied, scratch);
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
