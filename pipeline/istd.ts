/**
 * ISTD, the smoothness metric of Smooth Diffusion (Guo et al., CVPR 2024, supplement A.3): for each
 * prompt, two Gaussian noises; slerp at eta = 0, 0.1, ..., 1 gives 11 images; the pixel L2 distance
 * of each adjacent pair (pixels in [0, 1]); their standard deviation; ISTD is the mean over prompts.
 * Prompts and noises are fixed by the caller, so models and adapters are compared on the same work.
 */
import type { DiffusionModel } from "./model.ts";
import { encodePrompts, initialNoise, type TaskContext } from "./generate.ts";
import { interpolate } from "./interpolate.ts";
import type { RowAdapters } from "../loras/pack.ts";
import { forEachConcurrently } from "./concurrency.ts";

export interface IstdParams {
  prompts: string[];
  /** Noise seeds of prompt i: seeds[i] = [a, b]. */
  seeds: [number, number][];
  frames: number;
  steps: number;
  guidanceScale: number;
  adapters: RowAdapters;
  /** Prompts interpolated at once (each is `frames` concurrent tracks). */
  concurrency?: number;
}

export interface IstdResult {
  istd: number;
  /** Per prompt: the std of its adjacent distances. */
  perPrompt: number[];
}

export async function measureIstd(
  model: DiffusionModel,
  params: IstdParams,
  ctx: TaskContext = {},
): Promise<IstdResult> {
  const { height, width } = { height: model.info.nativeHeight / 8, width: model.info.nativeWidth / 8 };
  const perPrompt = new Array<number>(params.prompts.length);
  await forEachConcurrently(params.prompts.length, params.concurrency ?? 8, async (i) => {
    const [embedding, uncond] = await encodePrompts(model, [params.prompts[i], ""], ctx);
    const [a, b] = params.seeds[i];
    const result = await interpolate(model, {
      from: { latent: initialNoise(model, [a], height, width), embedding },
      to: { latent: initialNoise(model, [b], height, width), embedding },
      shape: { rows: 1, height, width },
      frames: params.frames,
      steps: params.steps,
      guidanceScale: params.guidanceScale,
      uncond,
      adapters: params.adapters,
    }, ctx);
    perPrompt[i] = result.istd;
  });
  return { istd: perPrompt.reduce((s, v) => s + v, 0) / perPrompt.length, perPrompt };
}
