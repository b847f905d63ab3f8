/**
 * The README's interpolation figure (as in Smooth Diffusion's Fig. 1 and 5): per prompt, the base
 * model's interpolation strip between two seeds' noises, a plot of its adjacent frame distances with
 * its ISTD, then the same with a LoRA (by default the Smooth-LoRA). The prompts and seeds are
 * evaluate's (tools/evaluate.ts): held-out prompts i = first, first + 1, ... (by default the first
 * three, not picked), seeds 2000000000 + 2i and + 2i + 1, so each row's ISTD is one of the
 * per-prompt values that `deno task istd` averages. The work runs in process through the engine's
 * interpolate task; the numbers are also written as JSON beside the PNG.
 *
 *   deno task figure [--prompts 3] [--first 0] [--frames 11] [--steps 50] [--upscale 2]
 *                    [--lora smooth-diffusion/tiny-sd-shapes-smooth-lora[@revision]]
 *                    [--out docs/figures/interpolation.png]
 *
 * The model and the Hub settings come from the same environment as the server (MODEL, HF_*); the
 * default adapter is in the bundled Hub cache, so no network is needed.
 */
import { Buffer } from "node:buffer";
import { parseArgs } from "node:util";
import sharp, { type OverlayOptions } from "sharp";
import { loadConfig } from "../config.ts";
import { loadServing } from "../engine/load.ts";
import { type InterpolateOutput, Tasks } from "../engine/tasks.ts";
import { istdOf } from "../pipeline/istd.ts";
import type { RgbImage } from "../pipeline/image.ts";

/** The figure's layout in pixels: margins, the axis column left of the strips, the label column right. */
export const LAYOUT = { pad: 12, header: 52, axis: 40, side: 230, title: 26, plot: 70, gap: 18 };

/** Where things go, for `prompts` blocks of two strips of `frames` frames `cell` pixels wide each. */
export function layout(prompts: number, frames: number, cell: number) {
  const { pad, header, axis, side, title, plot, gap } = LAYOUT;
  const block = title + 2 * (cell + plot);
  return {
    width: 2 * pad + axis + frames * cell + side,
    height: 2 * pad + header + prompts * block + (prompts - 1) * gap,
    left: pad + axis,
    /** The top of prompt p's strip of variant v (0 base, 1 LoRA); its plot is right under it. */
    stripTop: (p: number, v: number) => pad + header + p * (block + gap) + title + v * (cell + plot),
  };
}

const HELD_OUT = new URL("../tests/fixtures/tiny-sd-shapes/held_out.json", import.meta.url).pathname;
const GUIDANCE = 7.5;
const SMOOTH_LORA = "smooth-diffusion/tiny-sd-shapes-smooth-lora";
const VARIANTS = [
  { key: "base", colour: "#4c72b0" },
  { key: "lora", colour: "#dd8452" },
] as const;

const xml = (s: string) =>
  s.replace(/[<>&"]/g, (c) => `&${{ "<": "lt", ">": "gt", "&": "amp", '"': "quot" }[c]};`);
const text = (x: number, y: number, s: string, attrs = "") =>
  `<text x="${x}" y="${y}" ${attrs}>${xml(s)}</text>`;
const round = (v: number) => Number(v.toFixed(4));
const mean = (v: number[]) => v.reduce((a, b) => a + b, 0) / v.length;

/** Frames side by side, each scaled `k` times by pixel repetition (nearest neighbour). */
function strip(frames: RgbImage[], k: number): { data: Uint8Array; width: number; height: number } {
  const { width: w, height: h } = frames[0];
  const width = frames.length * w * k, height = h * k;
  const data = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const frame = frames[Math.floor(x / (w * k))];
      const src = (Math.floor(y / k) * w + Math.floor((x % (w * k)) / k)) * 3;
      data.set(frame.data.subarray(src, src + 3), (y * width + x) * 3);
    }
  }
  return { data, width, height };
}

/** A round number at or above `v` for the plots' shared top. */
function niceCeil(v: number): number {
  const p = 10 ** Math.floor(Math.log10(v));
  return ([1, 1.5, 2, 3, 4, 5, 6, 8, 10].find((m) => m * p >= v) ?? 10) * p;
}

/** One plot: a bar per adjacent pair, at the boundary of its two frames, and a dashed line at their mean. */
function plotSvg(distances: number[], top: number, left: number, cell: number, yMax: number, colour: string) {
  const h = LAYOUT.plot - 22, base = top + 6 + h;
  const y = (v: number) => base - (v / yMax) * h;
  const right = left + (distances.length + 1) * cell;
  const bars = distances.map((d, k) => {
    const x = left + (k + 1) * cell - cell * 0.2;
    return `<rect x="${x}" y="${y(d)}" width="${cell * 0.4}" height="${base - y(d)}" fill="${colour}"/>`;
  });
  const m = mean(distances);
  return [
    `<line x1="${left}" y1="${y(yMax)}" x2="${right}" y2="${y(yMax)}" stroke="#ddd"/>`,
    ...bars,
    `<line x1="${left}" y1="${base}" x2="${right}" y2="${base}" stroke="#444"/>`,
    `<line x1="${left}" y1="${y(m)}" x2="${right}" y2="${y(m)}" stroke="#222" stroke-dasharray="4 3"/>`,
    text(left - 6, y(yMax) + 4, String(yMax), 'text-anchor="end" class="small"'),
    text(left - 6, base + 4, "0", 'text-anchor="end" class="small"'),
  ].join("");
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      prompts: { type: "string", default: "3" },
      first: { type: "string", default: "0" },
      frames: { type: "string", default: "11" },
      steps: { type: "string", default: "50" },
      upscale: { type: "string", default: "2" },
      lora: { type: "string", default: SMOOTH_LORA },
      "seed-base": { type: "string", default: "2000000000" },
      out: { type: "string", default: "docs/figures/interpolation.png" },
    },
  });
  const [count, first, frameCount, steps, upscale, seedBase] = [
    values.prompts,
    values.first,
    values.frames,
    values.steps,
    values.upscale,
    values["seed-base"],
  ].map(Number);
  const heldOut: [string, number][] = JSON.parse(await Deno.readTextFile(HELD_OUT));
  if (first + count > heldOut.length) throw new Error(`only ${heldOut.length} held-out prompts`);
  const prompts = heldOut.slice(first, first + count).map(([prompt]) => prompt);
  // evaluate's seeds for held-out prompt i
  const seeds = (p: number) => [seedBase + 2 * (first + p), seedBase + 2 * (first + p) + 1];
  const [repo, revision = "main"] = values.lora!.split("@");
  const loraLabel = repo === SMOOTH_LORA ? "+ Smooth-LoRA" : "+ LoRA";

  const { location, model, adapters: registry } = await loadServing(loadConfig());
  const tasks = new Tasks(model, registry);
  const { nativeHeight, nativeWidth } = model.info;
  const started = performance.now();
  // [prompt][variant]; all at once, so that the batcher runs their frames together
  let runs: InterpolateOutput[][];
  try {
    runs = await Promise.all(
      prompts.map((prompt, i) =>
        Promise.all(VARIANTS.map(({ key }) =>
          tasks.interpolate({
            from: { prompt, seed: seeds(i)[0] },
            to: { prompt, seed: seeds(i)[1] },
            shape: { rows: 1, height: nativeHeight / 8, width: nativeWidth / 8 },
            frames: frameCount,
            steps,
            method: "ddim",
            guidanceScale: GUIDANCE,
            lora: key === "lora" ? [{ repo, revision, scale: 1 }] : [],
          }, {})
        ))
      ),
    );
  } finally {
    await model.release();
  }
  const seconds = Math.round((performance.now() - started) / 1000);
  const adapter = runs[0][1].adapters[0];

  const cell = nativeWidth * upscale;
  const { width, height, left, stripTop } = layout(count, frameCount, cell);
  const yMax = niceCeil(Math.max(...runs.flat().flatMap((r) => r.distances), 1e-6));
  const svg: string[] = [
    text(
      LAYOUT.pad,
      LAYOUT.pad + 16,
      `${location.name}: base model and ${loraLabel} (${repo})`,
      'class="head"',
    ),
    text(
      LAYOUT.pad,
      LAYOUT.pad + 36,
      `${frameCount} slerp frames between two seeds' noises, ${steps} DDIM steps, guidance ${GUIDANCE}; ` +
        "bars: adjacent frames' L2 distance (pixels in [0, 1]), dashed: their mean; ISTD: their std",
      'class="small"',
    ),
  ];
  const strips: OverlayOptions[] = [];
  prompts.forEach((prompt, p) => {
    svg.push(
      text(
        left,
        stripTop(p, 0) - 8,
        `“${prompt}”, seeds ${seeds(p)[0]} → ${seeds(p)[1]}`,
        'class="prompt"',
      ),
    );
    VARIANTS.forEach(({ colour }, v) => {
      const run = runs[p][v], top = stripTop(p, v), side = left + frameCount * cell + 14;
      const { data, width: w, height: h } = strip(run.frames, upscale);
      strips.push({ input: Buffer.from(data.buffer), raw: { width: w, height: h, channels: 3 }, top, left });
      svg.push(
        text(side, top + 22, v === 0 ? "base model" : loraLabel, `class="label" fill="${colour}"`),
        text(side, top + 42, v === 0 ? location.name : repo.split("/").pop()!, 'class="small"'),
        plotSvg(run.distances, top + cell, left, cell, yMax, colour),
        text(side, top + cell + 30, `ISTD ${run.istd.toFixed(3)}`, 'class="label"'),
        text(side, top + cell + 48, `mean distance ${mean(run.distances).toFixed(3)}`, 'class="small"'),
      );
    });
  });
  const overlay = `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}">` +
    "<style>text{font-family:'DejaVu Sans',sans-serif;fill:#222}.head{font-size:15px;font-weight:bold}" +
    ".prompt{font-size:14px}.label{font-size:14px;font-weight:bold}.small{font-size:11px;fill:#555}</style>" +
    svg.join("") + "</svg>";
  const png = await sharp({ create: { width, height, channels: 3, background: "#ffffff" } })
    .composite([...strips, { input: Buffer.from(overlay), top: 0, left: 0 }])
    .png({ compressionLevel: 9 })
    .toBuffer();

  const summary = (v: number) => {
    const r = istdOf(runs.map((run) => run[v]));
    return {
      istd: round(r.istd),
      mean_adjacent_distance: round(r.meanDistance),
      istd_over_mean: round(r.istdOverMean),
      seed_diversity: round(r.endpointDistance),
    };
  };
  const report = {
    model: location.name,
    adapter: `${adapter.repo}@${adapter.commit}:${adapter.file} x${adapter.scale}`,
    frames: frameCount,
    steps,
    guidance: GUIDANCE,
    pixel_range: "[0, 1]",
    image: { width, height, upscale },
    base: summary(0),
    lora: summary(1),
    prompts: prompts.map((prompt, p) => ({
      prompt,
      held_out_index: first + p,
      seeds: seeds(p),
      ...Object.fromEntries(VARIANTS.map(({ key }, v) => {
        const { distances, istd } = runs[p][v];
        return [key, { istd: round(istd), mean: round(mean(distances)), distances: distances.map(round) }];
      })),
    })),
  };
  const out = values.out!;
  const dir = out.slice(0, out.lastIndexOf("/") + 1);
  if (dir) await Deno.mkdir(dir, { recursive: true });
  await Deno.writeFile(out, png);
  await Deno.writeTextFile(out.replace(/\.png$/, "") + ".json", JSON.stringify(report, null, 2) + "\n");
  console.log(
    `${out} (${width}x${height}, ${png.length} bytes) and its .json, ${seconds} s: ISTD base ${
      report.base.istd.toFixed(3)
    }, ${loraLabel.slice(2)} ${report.lora.istd.toFixed(3)} (mean over ${count} prompts)`,
  );
}
