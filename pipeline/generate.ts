/**
 * Text-to-image and img2img, written as the sequential loop a paper would print, and the stages
 * the other tasks share with them (text encoding, VAE encoding and decoding, seeded noise). Every
 * model call goes through the model's batchers, so concurrent requests share runs without this
 * code knowing.
 */
import type { DiffusionModel } from "./model.ts";
import type { SchedulerName } from "./scheduler.ts";
import { gaussianNoise } from "./rng.ts";
import { pixelsToRgb, type RgbImage, rgbToPixels } from "./image.ts";
import { denoise, type LatentShape } from "./denoise.ts";
import { stage, type TaskContext } from "./stage.ts";
import type { RowAdapters } from "../loras/pack.ts";

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

export interface GenerateResult {
  images: { image: RgbImage; seed: number }[];
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
  return await stage(ctx, "text_encode", async () => {
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

export async function decodeToImages(
  model: DiffusionModel,
  latents: Float32Array,
  shape: LatentShape,
  ctx: TaskContext,
): Promise<RgbImage[]> {
  return await stage(ctx, "vae.decode", async () => {
    const pixels = await model.decodeLatents(latents, shape, { signal: ctx.signal, span: ctx.span });
    const width = shape.width * 8, height = shape.height * 8;
    return Array.from({ length: shape.rows }, (_, i) => pixelsToRgb(pixels, i, width, height));
  });
}

/** An image's latent (the VAE encoder's mean), scaled as the UNet takes it. */
export async function encodeToLatent(
  model: DiffusionModel,
  image: RgbImage,
  ctx: TaskContext,
): Promise<Float32Array> {
  return await stage(
    ctx,
    "vae.encode",
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
  const shape: LatentShape = { rows: params.numImages, height: params.height / 8, width: params.width / 8 };
  const seeds = imageSeeds(params.seed, params.numImages);
  const [cond, uncond] = (await encodePrompts(model, [params.prompt, params.negativePrompt], ctx))
    .map((embedding) => repeatRows(embedding, params.numImages));
  const start = params.init && params.init.strength < 1 ? await encodeInit(model, params, ctx) : undefined;
  const latents = await stage(ctx, "denoise", () =>
    denoise(model, {
      latents: initialNoise(model, seeds, shape.height, shape.width),
      start,
      shape,
      steps: params.steps,
      scheduler: params.scheduler,
      guidanceScale: params.guidanceScale,
      adapters: params.adapters,
      conditioning: () => ({ cond, uncond }),
    }, ctx), { steps: params.steps, scheduler: params.scheduler });
  const images = await decodeToImages(model, latents, shape, ctx);
  return { images: images.map((image, i) => ({ image, seed: seeds[i] })) };
}
