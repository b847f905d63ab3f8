/**
 * Interpolation between two endpoints (x_T and a text embedding each): slerp of x_T and lerp of
 * the embeddings at eta = k / (frames - 1), then DDIM with guidance. Every frame is its own track
 * through the batcher, so the frames of one request (and of others) share UNet runs.
 * Also the smoothness of the result: the pixel L2 distance of each adjacent pair of frames (pixels
 * in [0, 1]) and their standard deviation, ISTD (Guo et al., CVPR 2024, supplement A.3).
 */
import type { DiffusionModel } from "./model.ts";
import { decodeToImages } from "./generate.ts";
import { denoise, type LatentShape } from "./denoise.ts";
import { stage, type TaskContext } from "./stage.ts";
import type { RgbImage } from "./image.ts";
import type { RowAdapters } from "../loras/pack.ts";

export interface Endpoint {
  /** x_T [1, C, h, w]. */
  latent: Float32Array;
  /** Conditional text embedding [1, 77, hidden]. */
  embedding: Float32Array;
}

/** Spherical interpolation on the flattened tensors in float64; lerp when nearly parallel. */
export function slerp(v0: Float32Array, v1: Float32Array, eta: number): Float32Array {
  let dot = 0, n0 = 0, n1 = 0;
  for (let i = 0; i < v0.length; i++) {
    dot += v0[i] * v1[i];
    n0 += v0[i] * v0[i];
    n1 += v1[i] * v1[i];
  }
  const d = dot / Math.sqrt(n0 * n1);
  const out = new Float32Array(v0.length);
  if (Math.abs(d) > 0.9995) {
    for (let i = 0; i < v0.length; i++) out[i] = (1 - eta) * v0[i] + eta * v1[i];
    return out;
  }
  const theta = Math.acos(d), sinTheta = Math.sin(theta);
  const w0 = Math.sin((1 - eta) * theta) / sinTheta, w1 = Math.sin(eta * theta) / sinTheta;
  for (let i = 0; i < v0.length; i++) out[i] = w0 * v0[i] + w1 * v1[i];
  return out;
}

/** (1 - eta) a + eta b: exactly a at 0 and exactly b at 1. */
export function lerp(a: Float32Array, b: Float32Array, eta: number): Float32Array {
  return a.map((v, i) => (1 - eta) * v + eta * b[i]);
}

/** Pixel-space L2 distance of each adjacent pair, pixels scaled to [0, 1]. */
export function adjacentDistances(frames: RgbImage[]): number[] {
  return frames.slice(1).map((frame, k) => {
    let sum = 0;
    const prev = frames[k].data;
    for (let i = 0; i < frame.data.length; i++) sum += ((frame.data[i] - prev[i]) / 255) ** 2;
    return Math.sqrt(sum);
  });
}

/** Population standard deviation. */
export function standardDeviation(values: number[]): number {
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  return Math.sqrt(values.reduce((a, b) => a + (b - mean) ** 2, 0) / values.length);
}

export interface InterpolateParams {
  from: Endpoint;
  to: Endpoint;
  shape: LatentShape;
  frames: number;
  steps: number;
  guidanceScale: number;
  /** Unconditional embedding [1, 77, hidden]. */
  uncond: Float32Array;
  adapters: RowAdapters;
}

export interface InterpolateResult {
  frames: RgbImage[];
  distances: number[];
  istd: number;
}

export async function interpolate(
  model: DiffusionModel,
  params: InterpolateParams,
  ctx: TaskContext,
): Promise<InterpolateResult> {
  const etas = Array.from({ length: params.frames }, (_, k) => k / (params.frames - 1));
  let done = 0;
  const total = params.frames * params.steps;
  const latents = await stage(ctx, "denoise", () =>
    Promise.all(etas.map((eta) =>
      denoise(model, {
        latents: slerp(params.from.latent, params.to.latent, eta),
        shape: params.shape,
        steps: params.steps,
        scheduler: "ddim",
        guidanceScale: params.guidanceScale,
        adapters: params.adapters,
        conditioning: ((cond) => () => ({ cond, uncond: params.uncond }))(
          lerp(params.from.embedding, params.to.embedding, eta),
        ),
      }, { ...ctx, onProgress: () => ctx.onProgress?.(++done, total) })
    )), { frames: params.frames });
  const frames =
    (await Promise.all(latents.map((latent) => decodeToImages(model, latent, params.shape, ctx))))
      .flat();
  const distances = adjacentDistances(frames);
  return { frames, distances, istd: standardDeviation(distances) };
}
