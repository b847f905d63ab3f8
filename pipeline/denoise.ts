/**
 * The denoising kernel every task shares (text-to-image, img2img, reconstruction, editing,
 * interpolation): the scheduler's loop with classifier-free guidance, one UNet call per step
 * through the model's batcher.
 */
import type { DiffusionModel } from "./model.ts";
import { createScheduler, type SchedulerName } from "./scheduler.ts";
import type { TaskContext } from "./stage.ts";
import type { RowAdapters } from "../loras/pack.ts";

/** The size of a batch of latents: images, and their latent height and width. */
export interface LatentShape {
  rows: number;
  height: number;
  width: number;
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

function concat(a: Float32Array, b: Float32Array): Float32Array {
  const out = new Float32Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/** eps = eps_u + w (eps_c - eps_u), from the unconditional rows followed by the conditional ones. */
function guide(eps: Float32Array, scale: number): Float32Array {
  const half = eps.length / 2;
  const out = new Float32Array(half);
  for (let j = 0; j < half; j++) out[j] = eps[j] + scale * (eps[half + j] - eps[j]);
  return out;
}

/**
 * The denoising loop with classifier-free guidance. The unconditional and conditional rows of a
 * request travel in one UNet call.
 */
export async function denoise(
  model: DiffusionModel,
  params: DenoiseParams,
  ctx: TaskContext,
): Promise<Float32Array> {
  const { shape, guidanceScale } = params;
  const scheduler = createScheduler(params.scheduler, model.schedule, params.steps);
  const guided = guidanceScale !== 1;
  const rows = guided ? 2 * shape.rows : shape.rows;
  const rowAdapters = new Array<RowAdapters>(rows).fill(params.adapters);
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
      const eps = await model.predictNoise(
        guided ? concat(input, input) : input,
        { ...shape, rows },
        t,
        guided ? concat(uncond, cond) : cond,
        { signal: ctx.signal, span: ctx.span, adapters: rowAdapters, track },
      );
      latents = scheduler.step(latents, guided ? guide(eps, guidanceScale) : eps, i);
      ctx.onProgress?.(i + 1 - first, total - first);
    }
  } finally {
    track.close();
  }
  return latents;
}
