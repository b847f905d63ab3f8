/**
 * DDIM inversion: from a clean latent x_0 up to x_T, walking t = 1, 21, ..., 981 (for 50 steps)
 * with the conditional prompt alone (guidance 1), as in the paper's reference code:
 *   eps = UNet(x, t, emb);  x <- sqrt(a_t) (x - sqrt(1-a_c) eps) / sqrt(a_c) + sqrt(1-a_t) eps,  c = t - 1000/N
 * "fixed-point" refines each step by evaluating eps at the step's own end point until
 * x_t = F(x_t) (AIDI, Pan et al., ICCV 2023; ReNoise, Garibi et al., 2024): DDIM sampling from the
 * result then retraces the inverted path far more closely, with no gradients.
 */
import type { DiffusionModel } from "./model.ts";
import { ddimMove, DdimScheduler } from "./scheduler.ts";
import { decodeToImages, encodePrompts, encodeToLatent } from "./generate.ts";
import { denoise, type LatentShape } from "./denoise.ts";
import { stage, type TaskContext } from "./stage.ts";
import type { RgbImage } from "./image.ts";
import type { RowAdapters } from "../loras/pack.ts";

export const INVERSION_METHODS = ["ddim", "fixed-point"] as const;
export type InversionMethod = typeof INVERSION_METHODS[number];

export interface InvertParams {
  /** Scaled clean latents x_0 of `shape.rows` images. */
  latents: Float32Array;
  shape: LatentShape;
  steps: number;
  method: InversionMethod;
  /** Conditional embeddings per row [rows, 77, hidden]. */
  cond: Float32Array;
  adapters: RowAdapters;
  /** Extra UNet evaluations per step for "fixed-point". */
  iterations?: number;
}

export async function invert(
  model: DiffusionModel,
  params: InvertParams,
  ctx: TaskContext,
): Promise<Float32Array> {
  const ddim = new DdimScheduler(model.schedule, params.steps);
  const ratio = Math.floor(model.schedule.num_train_timesteps / params.steps);
  const timesteps = [...ddim.timesteps].reverse();
  const adapters = new Array<RowAdapters>(params.shape.rows).fill(params.adapters);
  const iterations = params.method === "fixed-point" ? (params.iterations ?? 3) : 0;
  let x = params.latents;
  const track = model.batchers.unet.openTrack();
  try {
    for (let i = 0; i < timesteps.length; i++) {
      ctx.signal?.throwIfAborted();
      const t = timesteps[i];
      const aFrom = ddim.alphaAt(t - ratio), aTo = ddim.alphaAt(t);
      const eps = (latent: Float32Array) =>
        model.predictNoise(latent, params.shape, t, params.cond, {
          signal: ctx.signal,
          span: ctx.span,
          adapters,
          track,
        });
      let next = ddimMove(x, await eps(x), aFrom, aTo);
      for (let k = 0; k < iterations; k++) next = ddimMove(x, await eps(next), aFrom, aTo);
      x = next;
      ctx.onProgress?.(i + 1, timesteps.length);
    }
  } finally {
    track.close();
  }
  return x;
}

export interface InvertImageParams {
  image: RgbImage;
  prompt: string;
  steps: number;
  method: InversionMethod;
  /** Guidance of the reconstruction (1: the conditional prompt alone, matching the inversion). */
  guidanceScale: number;
  adapters: RowAdapters;
}

export interface InvertImageResult {
  /** x_T [1, C, h, w]. */
  latent: Float32Array;
  shape: LatentShape;
  reconstruction: RgbImage;
  /** The VAE's own reconstruction (decode(encode(image))): the upper bound of any inversion. */
  vaeReconstruction: RgbImage;
}

/** x_T of an image: encode it, then invert under the conditional embedding `cond`. */
export async function invertToNoise(
  model: DiffusionModel,
  params: {
    image: RgbImage;
    cond: Float32Array;
    steps: number;
    method: InversionMethod;
    adapters: RowAdapters;
  },
  ctx: TaskContext,
): Promise<{ latent: Float32Array; shape: LatentShape; x0: Float32Array }> {
  const shape: LatentShape = { rows: 1, height: params.image.height / 8, width: params.image.width / 8 };
  const x0 = await encodeToLatent(model, params.image, ctx);
  const latent = await stage(ctx, "invert", () =>
    invert(model, {
      latents: x0,
      shape,
      steps: params.steps,
      method: params.method,
      cond: params.cond,
      adapters: params.adapters,
    }, ctx), { method: params.method, steps: params.steps });
  return { latent, shape, x0 };
}

export async function invertImage(
  model: DiffusionModel,
  params: InvertImageParams,
  ctx: TaskContext,
): Promise<InvertImageResult> {
  const [cond, uncond] = await encodePrompts(model, [params.prompt, ""], ctx);
  const { latent, shape, x0 } = await invertToNoise(model, { ...params, cond }, {
    ...ctx,
    onProgress: (k, n) => ctx.onProgress?.(k, 2 * n),
  });
  const reconstructed = await stage(ctx, "denoise", () =>
    denoise(model, {
      latents: latent,
      shape,
      steps: params.steps,
      scheduler: "ddim",
      guidanceScale: params.guidanceScale,
      adapters: params.adapters,
      conditioning: () => ({ cond, uncond }),
    }, { ...ctx, onProgress: (k, n) => ctx.onProgress?.(n + k, 2 * n) }));
  // Decoded one after the other, so the reconstruction is decoded exactly as /edit decodes its result.
  const [reconstruction] = await decodeToImages(model, reconstructed, shape, ctx);
  const [vaeReconstruction] = await decodeToImages(model, x0, shape, ctx);
  return { latent, shape, reconstruction, vaeReconstruction };
}
