/**
 * Editing as in the paper (Eq. 15; not prompt-to-prompt): from the inverted x_T of the source
 * image, run the DDIM loop with the source prompt for the first (1 - r) N steps, then with the
 * target prompt. r = 0 reproduces the reconstruction; r = 1 follows the target from the start.
 */
import type { DiffusionModel } from "./model.ts";
import { decodeToImages, encodePrompts } from "./generate.ts";
import { denoise, type LatentShape } from "./denoise.ts";
import { stage, type TaskContext } from "./stage.ts";
import type { RgbImage } from "./image.ts";
import type { RowAdapters } from "../loras/pack.ts";

export interface EditParams {
  /** x_T [1, C, h, w] of the source image. */
  latent: Float32Array;
  shape: LatentShape;
  sourcePrompt: string;
  targetPrompt: string;
  ratio: number;
  steps: number;
  guidanceScale: number;
  adapters: RowAdapters;
}

/** The step index at which the target prompt takes over. */
export function switchStep(ratio: number, steps: number): number {
  return Math.round((1 - ratio) * steps);
}

export async function edit(
  model: DiffusionModel,
  params: EditParams,
  ctx: TaskContext,
): Promise<{ image: RgbImage }> {
  const [source, target, uncond] = await encodePrompts(
    model,
    [params.sourcePrompt, params.targetPrompt, ""],
    ctx,
  );
  const switchAt = switchStep(params.ratio, params.steps);
  const latents = await stage(ctx, "denoise", () =>
    denoise(model, {
      latents: params.latent,
      shape: params.shape,
      steps: params.steps,
      scheduler: "ddim",
      guidanceScale: params.guidanceScale,
      adapters: params.adapters,
      conditioning: (i) => ({ cond: i < switchAt ? source : target, uncond }),
    }, ctx), { ratio: params.ratio, switch_step: switchAt });
  const [image] = await decodeToImages(model, latents, params.shape, ctx);
  return { image };
}
