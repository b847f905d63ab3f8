/**
 * Evaluates the served model, optionally with LoRA adapters, on fixed held-out work, so that models
 * and adapters compare on the same prompts, seeds and drawings:
 * - istd: smoothness (pipeline/istd.ts), pixels in [0, 1]; lower is smoother; with the mean adjacent
 *   distance, ISTD / mean (scale-free) and the seed diversity (distance between the two seeds' images);
 * - accuracy: all-attributes and per-attribute accuracy of generated images, read by the training
 *   tools' evaluator;
 * - inversion: PSNR of DDIM inversion + reconstruction of real drawings, and the VAE's bound; the
 *   inversion is guidance-free under the caption (pipeline/invert.ts), the reconstruction at guidance
 *   1 (the inversion's own) and again at 7.5 (where plain DDIM inversion drifts);
 * - edit: each real drawing edited as /edit does by default (inverted under its caption, ratio, guidance
 *   and method from routes/schemas.ts) towards its caption with one attribute changed (the kind cycling
 *   colour, shape, size, background over the drawings; see editTargets), then read by the evaluator:
 *   changed as asked (the edited attribute reads as the target), others kept (the other three read as
 *   in the caption), and both.
 * The work runs in process through the engine's task entry points (engine/tasks.ts), as the
 * server's requests do.
 *
 *   deno task evaluate [--lora org/name[@revision]]... [--scale 1] [--metrics istd,accuracy,inversion,edit]
 *                      [--list a|b] [--prompts 100] [--steps 50] [--guidance 7.5] [--json FILE] [--keep DIR]
 *   deno task istd [--lora ...]        (the same with --metrics istd)
 *
 * --json FILE also holds the per-drawing figures (inversion_cases, edit_cases); --keep DIR writes the
 * drawings, generated and edited images there (and keeps them) instead of a temporary folder.
 *
 * The model and the Hub settings come from the same environment as the server (MODEL, HF_*).
 */
import { parseArgs } from "node:util";
import { loadConfig } from "../config.ts";
import { loadServing } from "../engine/load.ts";
import { type InterpolateOutput, Tasks } from "../engine/tasks.ts";
import { istdOf } from "../pipeline/istd.ts";
import { decodeImage, encodeImage, type RgbImage } from "../pipeline/image.ts";
import { editRequestSchema } from "../routes/schemas.ts";
import type { AdapterSpec } from "../loras/registry.ts";
import { runPython } from "../support/python.ts";
import { forEachConcurrently } from "../pipeline/concurrency.ts";

const METRICS = ["istd", "accuracy", "inversion", "edit"] as const;
type Metric = typeof METRICS[number];
/**
 * The held-out lists (training/data.py's HELD_OUT_LISTS): their (caption, seed) pairs, and the first
 * of the noise seeds ISTD interpolates between. "b" is drawn with other seeds throughout, to check
 * that a result on "a" holds on held-out prompts and seeds in general.
 */
const HELD_OUT_LISTS = {
  a: { file: "held_out.json", istdSeedBase: 2_000_000_000 },
  b: { file: "held_out_b.json", istdSeedBase: 2_100_000_000 },
} as const;
type ListName = keyof typeof HELD_OUT_LISTS;
const TRAINING = new URL("../training/", import.meta.url).pathname;
/** /edit's defaults, read from its request schema (the limits do not touch them). */
const EDIT_DEFAULTS = (() => {
  const shape = editRequestSchema({ maxSteps: 1000, maxPixels: 1 << 30, maxImages: 1 }).shape;
  return {
    ratio: shape.ratio.parse(undefined),
    guidanceScale: shape.guidance_scale.parse(undefined),
    method: shape.method.parse(undefined),
    returnReconstruction: shape.return_reconstruction.parse(undefined),
  };
})();

const { values } = parseArgs({
  args: Deno.args,
  options: {
    lora: { type: "string", multiple: true, default: [] },
    scale: { type: "string", default: "1" },
    metrics: { type: "string", default: METRICS.join(",") },
    prompts: { type: "string", default: "100" },
    frames: { type: "string", default: "11" },
    steps: { type: "string", default: "50" },
    list: { type: "string", default: "a" },
    guidance: { type: "string", default: "7.5" },
    json: { type: "string" },
    keep: { type: "string" },
  },
});
const metrics = values.metrics!.split(",") as Metric[];
const unknown = metrics.filter((m) => !METRICS.includes(m));
if (unknown.length) throw new Error(`unknown metrics ${unknown.join(", ")}; known: ${METRICS.join(", ")}`);
const count = Number(values.prompts);
const steps = Number(values.steps);
/** The generations' classifier-free guidance (ISTD strips, accuracy images, guided reconstruction). */
const GUIDANCE = Number(values.guidance);
if (!(GUIDANCE >= 1)) throw new Error(`--guidance ${values.guidance}: a number, at least 1`);
if (!Object.hasOwn(HELD_OUT_LISTS, values.list!)) {
  throw new Error(`--list ${values.list}: known lists are ${Object.keys(HELD_OUT_LISTS).join(", ")}`);
}
const list = HELD_OUT_LISTS[values.list as ListName];
const HELD_OUT = new URL(`../tests/fixtures/tiny-sd-shapes/${list.file}`, import.meta.url).pathname;
const heldOut: [string, number][] = JSON.parse(await Deno.readTextFile(HELD_OUT));
if (count > heldOut.length) throw new Error(`--prompts ${count}: only ${heldOut.length} held-out pairs`);
const pairs = heldOut.slice(0, count);

const percent = (rate: unknown) => `${(100 * (rate as number)).toFixed(1)}%`;

function mean(values: number[]): number {
  return values.reduce((s, v) => s + v, 0) / values.length;
}

/** Per prompt, the interpolation between two fixed seeds' noises with that prompt at both ends. */
async function istd(tasks: Tasks, lora: AdapterSpec[]) {
  const base = list.istdSeedBase;
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
  await Deno.mkdir(`${dir}/generated`, { recursive: true });
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

/** The pairs' ground-truth drawings as DIR/real/<i>.png, rendered once per run. */
let drawn: Promise<void> | undefined;
async function drawings(dir: string): Promise<RgbImage[]> {
  drawn ??= runPython([
    `${TRAINING}render.py`,
    "--pairs",
    HELD_OUT,
    "--count",
    String(count),
    "--out",
    `${dir}/real`,
  ]).then(() => {});
  await drawn;
  return await Promise.all(
    pairs.map(async (_, i) => decodeImage(await Deno.readFile(`${dir}/real/${i}.png`))),
  );
}

async function inversion(tasks: Tasks, lora: AdapterSpec[], dir: string) {
  const images = await drawings(dir);
  const reconstruction: number[] = [], guided: number[] = [], vaeBound: number[] = [];
  await forEachConcurrently(pairs.length, 16, async (i) => {
    const invert = (guidanceScale: number) =>
      tasks.invert({ image: images[i], prompt: pairs[i][0], steps, method: "ddim", guidanceScale, lora }, {});
    const { metrics } = await invert(1);
    reconstruction[i] = metrics.psnr;
    vaeBound[i] = metrics.upper_bound.psnr;
    guided[i] = (await invert(GUIDANCE)).metrics.psnr;
  });
  return {
    inversion_psnr_db: mean(reconstruction),
    inversion_guided_psnr_db: mean(guided),
    inversion_guided_scale: GUIDANCE,
    vae_bound_psnr_db: mean(vaeBound),
    inversion_cases: pairs.map(([prompt], i) => ({
      prompt,
      psnr_db: reconstruction[i],
      guided_psnr_db: guided[i],
      vae_bound_psnr_db: vaeBound[i],
    })),
  };
}

const ATTRIBUTE_KINDS = ["colour", "shape", "size", "background"] as const;
type AttributeKind = typeof ATTRIBUTE_KINDS[number];
type Attributes = Record<AttributeKind, string>;

/** A caption as training/data.py writes it (Attributes.caption). */
function caption(a: Attributes): string {
  return `a ${a.size} ${a.colour} ${a.shape} on ${
    "aeiou".includes(a.background[0]) ? "an" : "a"
  } ${a.background} background`;
}

function parseCaption(text: string): Attributes {
  const words = text.split(" ");
  if (words.length !== 8 || words[0] !== "a" || words[4] !== "on") {
    throw new Error(`not a dataset caption: ${text}`);
  }
  return { size: words[1], colour: words[2], shape: words[3], background: words[6] };
}

interface EditTarget {
  kind: AttributeKind;
  from: string;
  to: string;
  source: string;
  target: string;
}

/**
 * Drawing i changes attribute kind i mod 4 (colour, shape, size, background), to the
 * floor(i / 4)-th (cyclically) of that kind's other values in training/data.py's order, leaving out
 * the colour of the background and the background of the colour (the data set never draws an object
 * in its background's colour), so every target caption is one the model was trained on.
 */
function editTargets(values: Record<AttributeKind, string[]>): EditTarget[] {
  return pairs.map(([source], i) => {
    const kind = ATTRIBUTE_KINDS[i % ATTRIBUTE_KINDS.length];
    const attrs = parseCaption(source);
    const clash = kind === "colour" ? attrs.background : kind === "background" ? attrs.colour : undefined;
    const candidates = values[kind].filter((v) => v !== attrs[kind] && v !== clash);
    const to = candidates[Math.floor(i / ATTRIBUTE_KINDS.length) % candidates.length];
    return { kind, from: attrs[kind], to, source, target: caption({ ...attrs, [kind]: to }) };
  });
}

/** The training tools' vocabulary, and their evaluator's readings of a list of images. */
const VOCABULARY_PY = `import json, data
print(json.dumps({"colour": list(data.COLOURS), "shape": list(data.SHAPES), "size": list(data.SIZES),
                  "background": list(data.COLOURS)}))`;
const READ_PY = `import json, sys
from evaluator import read_image
print(json.dumps([{k: getattr(r, k) for k in ("colour", "shape", "size", "background")}
                  for r in map(read_image, json.load(open(sys.argv[1])))]))`;

async function readImages(paths: string[], dir: string): Promise<Attributes[]> {
  const list = `${dir}/read-${crypto.randomUUID()}.json`;
  await Deno.writeTextFile(list, JSON.stringify(paths));
  return JSON.parse(await runPython(["-c", READ_PY, list], TRAINING));
}

async function editMetric(tasks: Tasks, lora: AdapterSpec[], dir: string) {
  const images = await drawings(dir);
  const targets = editTargets(JSON.parse(await runPython(["-c", VOCABULARY_PY], TRAINING)));
  for (const t of targets) {
    // the target caption must be one the evaluator's own parser takes
    if (caption(parseCaption(t.target)) !== t.target) throw new Error(`bad target caption ${t.target}`);
  }
  await Deno.mkdir(`${dir}/edited`, { recursive: true });
  await forEachConcurrently(pairs.length, 16, async (i) => {
    const { image } = await tasks.edit({
      source: { image: images[i] },
      sourcePrompt: targets[i].source,
      targetPrompt: targets[i].target,
      steps,
      ...EDIT_DEFAULTS,
      lora,
    }, {});
    await Deno.writeFile(`${dir}/edited/${i}.png`, await encodeImage(image, "png"));
  });
  const [edited, drawn] = await Promise.all([
    readImages(pairs.map((_, i) => `${dir}/edited/${i}.png`), dir),
    readImages(pairs.map((_, i) => `${dir}/real/${i}.png`), dir),
  ]);
  const cases = targets.map((t, i) => {
    const expected = parseCaption(t.target);
    const changed = edited[i][t.kind] === t.to;
    const kept = ATTRIBUTE_KINDS.every((k) => k === t.kind || edited[i][k] === expected[k]);
    return { ...t, read: edited[i], changed, kept, correct: changed && kept };
  });
  const rate = (list: typeof cases, key: "changed" | "kept" | "correct") =>
    list.filter((c) => c[key]).length / list.length;
  const summary = (list: typeof cases) => ({
    n: list.length,
    changed: rate(list, "changed"),
    kept: rate(list, "kept"),
    all: rate(list, "correct"),
  });
  return {
    edit_changed: rate(cases, "changed"),
    edit_kept: rate(cases, "kept"),
    edit_all: rate(cases, "correct"),
    edit_by_kind: Object.fromEntries(
      ATTRIBUTE_KINDS.map((k) => [k, summary(cases.filter((c) => c.kind === k))]),
    ),
    // the evaluator on the unedited drawings against their own captions: how far its reading is to be trusted
    edit_drawings_read_correctly: drawn.filter((r, i) => {
      const a = parseCaption(pairs[i][0]);
      return ATTRIBUTE_KINDS.every((k) => r[k] === a[k]);
    }).length / pairs.length,
    edit_ratio: EDIT_DEFAULTS.ratio,
    edit_guidance: EDIT_DEFAULTS.guidanceScale,
    edit_method: EDIT_DEFAULTS.method,
    edit_cases: cases,
  };
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
const scratch = values.keep ?? await Deno.makeTempDir({ prefix: "evaluate-" });
if (values.keep) await Deno.mkdir(scratch, { recursive: true });
const report: Record<string, unknown> = {
  model: location.name,
  adapters: applied.map((a) => `${a.adapter.id} x${a.scale}`).join(", ") || "none",
  list: values.list,
  istd_seed_base: list.istdSeedBase,
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
      : metric === "inversion"
      ? await inversion(tasks, specs, scratch)
      : await editMetric(tasks, specs, scratch);
    Object.assign(report, result, {
      [`${metric}_seconds`]: Math.round((performance.now() - started) / 1000),
    });
    // per-item details go to --json only
    const shown = Object.entries(result).filter(([key]) => !key.endsWith("_cases"));
    console.log(
      JSON.stringify({ metric, ...Object.fromEntries(shown), seconds: report[`${metric}_seconds`] }),
    );
  }
} finally {
  release();
  await model.release();
  if (!values.keep) await Deno.remove(scratch, { recursive: true });
}
console.log(
  `adapters: ${report.adapters}; ${count} held-out prompts of list ${values.list}, ${steps} DDIM steps, guidance ${GUIDANCE}` +
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
      ? `; DDIM inversion PSNR ${
        (report.inversion_psnr_db as number).toFixed(2)
      } dB reconstructed at guidance 1, ${
        (report.inversion_guided_psnr_db as number).toFixed(2)
      } dB at ${GUIDANCE} (VAE bound ${(report.vae_bound_psnr_db as number).toFixed(2)})`
      : "") +
    (report.edit_all !== undefined
      ? `; edit (ratio ${report.edit_ratio}, guidance ${report.edit_guidance}): changed as asked ${
        percent(report.edit_changed)
      }, others kept ${percent(report.edit_kept)}, all correct ${percent(report.edit_all)}`
      : ""),
);
if (values.json) await Deno.writeTextFile(values.json, JSON.stringify(report, null, 2) + "\n");
