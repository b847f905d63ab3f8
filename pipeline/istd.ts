/**
 * ISTD, the smoothness metric of Smooth Diffusion (Guo et al., CVPR 2024, supplement A.3): for each
 * prompt, two Gaussian noises; slerp at eta = 0, 0.1, ..., 1 gives 11 images; the pixel L2 distance
 * of each adjacent pair (pixels in [0, 1]); their standard deviation; ISTD is the mean over prompts.
 * Prompts and noises are fixed by the caller (tools/evaluate.ts, through the interpolate task), so
 * models and adapters are compared on the same work.
 */
import type { RgbImage } from "./image.ts";
import { adjacentDistances } from "./interpolate.ts";

/** One prompt's interpolation between its two noises, as the interpolate task returns it. */
export interface IstdRun {
  frames: RgbImage[];
  distances: number[];
  istd: number;
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

/** ISTD and its companions over the prompts' interpolations. */
export function istdOf(runs: IstdRun[]): IstdResult {
  const perPrompt = runs.map((run) => run.istd);
  const means = runs.map((run) => average(run.distances));
  return {
    istd: average(perPrompt),
    perPrompt,
    meanDistance: average(means),
    istdOverMean: average(perPrompt.map((std, i) => means[i] > 0 ? std / means[i] : 0)),
    endpointDistance: average(
      runs.map(({ frames }) => adjacentDistances([frames[0], frames[frames.length - 1]])[0]),
    ),
  };
}

const average = (values: number[]) => values.reduce((s, v) => s + v, 0) / values.length;
