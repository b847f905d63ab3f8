/**
 * Text-to-image, written as the sequential loop a paper would print. Every model call goes
 * through the model's batchers, so concurrent requests share runs without this code knowing.
 */
import type { DiffusionModel } from "./model.ts";
import { createScheduler, type SchedulerName } from "./scheduler.ts";
import { gaussianNoise } from "./rng.ts";
import { pixelsToRgb, type RgbImage, rgbToPixels } from "./image.ts";
import { inSpan, type Span } from "../telemetry.ts";
import type { RowAdapters } from "../loras/pack.ts";

export interface TaskContext {
  signal?: AbortSignal;
  span?: Span;
  onProgress?: (step: number, total: number) => void;
}

export interface GenerateParams {
  prompt: string;
  negativePrompt: string;
  width: number;
  height: number;
  steps: number;
  guidanceScale: number;
  seed: number;
  scheduler: SchedulerName;
  numImages: number;
  /** LoRA adapters applied to every image of the request. */
  adapters: RowAdapters;
  /**
   * img2img (SDEdit): start from this image noised to `strength` of the schedule and run the steps
   * left (diffusers' rule: steps x strength of them). 0 returns the VAE's reconstruction of the
   * image; 1 ignores it (text-to-image with the same seed).
   */
  init?: { image: RgbImage; strength: number };
}

export interface Timings {
  [stage: string]: number;
}

export interface GenerateResult {
  images: { image: RgbImage; seed: number }[];
  timings: Timings;
}

export interface LatentShape {
  rows: number;
  height: number;
  width: number;
}

/** Image i of a request uses seed + i, so any one image can be reproduced alone. */
export function imageSeeds(seed: number, count: number): number[] {
  return Array.from({ length: count }, (_, i) => (seed + i) >>> 0);
}

export function initialNoise(
  model: DiffusionModel,
  seeds: number[],
  height: number,
  width: number,
): Float32Array {
  const size = model.info.latentChannels * height * width;
  const out = new Float32Array(seeds.length * size);
  seeds.forEach((seed, i) => out.set(gaussianNoise(seed, size), i * size));
  return out;
}

/** One text embedding [77, hidden] per prompt, from one batched text-encoder call. */
export async function encodePrompts(
  model: DiffusionModel,
  prompts: string[],
  ctx: TaskContext,
): Promise<Float32Array[]> {
  return await inSpan("text_encode", ctx.span, async () => {
    const all = await model.encodeText(prompts, { signal: ctx.signal, span: ctx.span });
    const size = all.length / prompts.length;
    return prompts.map((_, i) => all.subarray(i * size, (i + 1) * size));
  }, { prompts: prompts.length });
}

export function repeatRows(rows: Float32Array, times: number): Float32Array {
  const out = new Float32Array(rows.length * times);
  for (let i = 0; i < times; i++) out.set(rows, i * rows.length);
  return out;
}

function concat(a: Float32Array, b: Float32Array): Float32Array {
  const out = new Float32Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

export interface DenoiseParams {
  /** x_T for `shape.rows` images; with `start`, the noise added to its latent. */
  latents: Float32Array;
  /** Begin at step `index` from `x0` noised to that step's level (img2img) instead of from x_T. */
  start?: { x0: Float32Array; index: number };
  shape: LatentShape;
  steps: number;
  scheduler: SchedulerName;
  guidanceScale: number;
  /** LoRA adapters applied to every row. */
  adapters: RowAdapters;
  /** Text embeddings per image ([rows, 77, hidden]) for each step index: lets editing switch prompts. */
  conditioning: (stepIndex: number) => { cond: Float32Array; uncond: Float32Array };
}

/**
 * The denoising loop with classifier-free guidance: eps = eps_u + w (eps_c - eps_u). The
 * unconditional and conditional rows of a request travel in one UNet call.
 */
export async function denoise(
  model: DiffusionModel,
  params: DenoiseParams,
  ctx: TaskContext,
): Promise<Float32Array> {
  const { shape, guidanceScale } = params;
  const scheduler = createScheduler(params.scheduler, model.schedule, params.steps);
  const guided = guidanceScale !== 1;
  const rowAdapters = new Array<RowAdapters>(guided ? 2 * shape.rows : shape.rows).fill(params.adapters);
  const total = scheduler.timesteps.length;
  const first = Math.min(params.start?.index ?? 0, total);
  let latents: Float32Array = !params.start
    ? params.latents.map((v) => v * scheduler.initNoiseSigma)
    : first < total
    ? scheduler.addNoise(params.start.x0, params.latents, first)
    : params.start.x0; // no steps left: the image's own latent
  // the loop's track: its steps run back to back with every other loop's (batcher.ts)
  const track = model.batchers.unet.openTrack();
  try {
    for (let i = first; i < total; i++) {
      ctx.signal?.throwIfAborted();
      const t = scheduler.timesteps[i];
      const { cond, uncond } = params.conditioning(i);
      const input = scheduler.scaleModelInput(latents, i);
      const rows = guided ? 2 * shape.rows : shape.rows;
      const eps = await model.predictNoise(
        guided ? concat(input, input) : input,
        { ...shape, rows },
        t,
        guided ? concat(uncond, cond) : cond,
        { signal: ctx.signal, span: ctx.span, adapters: rowAdapters, track },
      );
      let guidedEps = eps;
      if (guided) {
        const half = latents.length;
        guidedEps = new Float32Array(half);
        for (let j = 0; j < half; j++) guidedEps[j] = eps[j] + guidanceScale * (eps[half + j] - eps[j]);
      }
      latents = scheduler.step(latents, guidedEps, i);
      ctx.onProgress?.(i + 1 - first, total - first);
    }
  } finally {
    track.close();
  }
  return latents;
}

export async function decodeToImages(
  model: DiffusionModel,
  latents: Float32Array,
  shape: LatentShape,
  ctx: TaskContext,
): Promise<RgbImage[]> {
  const pixels = await inSpan(
    "vae.decode",
    ctx.span,
    () => model.decodeLatents(latents, shape, { signal: ctx.signal, span: ctx.span }),
  );
  const width = shape.width * 8, height = shape.height * 8;
  return Array.from({ length: shape.rows }, (_, i) => pixelsToRgb(pixels, i, width, height));
}

export async function timed<T>(timings: Timings, stage: string, fn: () => Promise<T>): Promise<T> {
  const start = performance.now();
  try {
    return await fn();
  } finally {
    timings[stage] = Math.round((performance.now() - start) * 10) / 10;
  }
}

/** An image's latent (the VAE encoder's mean), scaled as the UNet takes it. */
export async function encodeToLatent(
  model: DiffusionModel,
  image: RgbImage,
  ctx: TaskContext,
): Promise<Float32Array> {
  return await inSpan(
    "vae.encode",
    ctx.span,
    () =>
      model.encodeImages(rgbToPixels(image), { rows: 1, height: image.height, width: image.width }, {
        signal: ctx.signal,
        span: ctx.span,
      }),
  );
}

/** img2img's start: the image's latent for every image of the request, and the step to begin at. */
async function encodeInit(model: DiffusionModel, params: GenerateParams, ctx: TaskContext) {
  const { image, strength } = params.init!;
  const x0 = await encodeToLatent(model, image, ctx);
  const index = params.steps - Math.min(Math.floor(params.steps * strength), params.steps);
  return { x0: repeatRows(x0, params.numImages), index };
}

export async function generate(
  model: DiffusionModel,
  params: GenerateParams,
  ctx: TaskContext,
): Promise<GenerateResult> {
  const timings: Timings = {};
  const shape: LatentShape = { rows: params.numImages, height: params.height / 8, width: params.width / 8 };
  const seeds = imageSeeds(params.seed, params.numImages);
  const [cond, uncond] = (await timed(
    timings,
    "text_encode_ms",
    () => encodePrompts(model, [params.prompt, params.negativePrompt], ctx),
  )).map((embedding) => repeatRows(embedding, params.numImages));
  const start = params.init && params.init.strength < 1
    ? await timed(timings, "image_encode_ms", () => encodeInit(model, params, ctx))
    : undefined;
  const latents = await timed(timings, "denoise_ms", () =>
    inSpan("denoise", ctx.span, () =>
      denoise(model, {
        latents: initialNoise(model, seeds, shape.height, shape.width),
        start,
        shape,
        steps: params.steps,
        scheduler: params.scheduler,
        guidanceScale: params.guidanceScale,
        adapters: params.adapters,
        conditioning: () => ({ cond, uncond }),
      }, ctx), { steps: params.steps, scheduler: params.scheduler }));
  const images = await timed(timings, "decode_ms", () => decodeToImages(model, latents, shape, ctx));
  return { images: images.map((image, i) => ({ image, seed: seeds[i] })), timings };
}
