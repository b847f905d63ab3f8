/**
 * ISTD, the smoothness metric of Smooth Diffusion (Guo et al., CVPR 2024, supplement A.3): for each
 * prompt, two Gaussian noises; slerp at eta = 0, 0.1, ..., 1 gives 11 images; the pixel L2 distance
 * of each adjacent pair (pixels in [0, 1]); their standard deviation; ISTD is the mean over prompts.
 * Prompts and noises are fixed by the caller, so models and adapters are compared on the same work.
 */
import type { DiffusionModel } from "./model.ts";
import { encodePrompts, initialNoise } from "./generate.ts";
import type { TaskContext } from "./stage.ts";
import { adjacentDistances, interpolate } from "./interpolate.ts";
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
  /** Mean over prompts of the mean adjacent distance: how far apart the frames are at all. */
  meanDistance: number;
  /**
   * Mean over prompts of std / mean of the adjacent distances: smoothness without scale. ISTD alone
   * rewards a model whose two seeds draw nearly the same image (all distances small).
   */
  istdOverMean: number;
  /** Mean over prompts of the distance between the two seeds' own images: the seed diversity. */
  endpointDistance: number;
}

export async function measureIstd(
  model: DiffusionModel,
  params: IstdParams,
  ctx: TaskContext = {},
): Promise<IstdResult> {
  const { height, width } = { height: model.info.nativeHeight / 8, width: model.info.nativeWidth / 8 };
  const n = params.prompts.length;
  const perPrompt = new Array<number>(n), means = new Array<number>(n), endpoints = new Array<number>(n);
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
    means[i] = average(result.distances);
    endpoints[i] = adjacentDistances([result.frames[0], result.frames[result.frames.length - 1]])[0];
  });
  return {
    istd: average(perPrompt),
    perPrompt,
    meanDistance: average(means),
    istdOverMean: average(perPrompt.map((std, i) => means[i] > 0 ? std / means[i] : 0)),
    endpointDistance: average(endpoints),
  };
}

const average = (values: number[]) => values.reduce((s, v) => s + v, 0) / values.length;
