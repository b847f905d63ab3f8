/**
 * The engine's task entry points: what a request asks for (plain data: prompts, decoded images,
 * latents, adapter names) in, what it gets (images, latents, similarity figures) out. Each resolves
 * its adapters, runs the pipeline's sequential loops and releases the adapters. The HTTP routes and
 * the evaluation tool call these and nothing below them.
 */
import type { DiffusionModel } from "../pipeline/model.ts";
import type { AdapterRegistry, AdapterSpec } from "../loras/registry.ts";
import { RegistryError, type RegistryErrorCode } from "../loras/registry.ts";
import { AdapterError } from "../loras/adapter.ts";
import type { AppliedAdapter } from "../loras/pack.ts";
import type { RgbImage } from "../pipeline/image.ts";
import { encodePrompts, generate, type GenerateParams, initialNoise } from "../pipeline/generate.ts";
import type { LatentShape } from "../pipeline/denoise.ts";
import { stage, StageClock, type TaskContext, type Timings } from "../pipeline/stage.ts";
import {
  type InversionMethod,
  invertImage,
  type InvertImageParams,
  invertToNoise,
} from "../pipeline/invert.ts";
import { edit } from "../pipeline/edit.ts";
import { type Endpoint, interpolate } from "../pipeline/interpolate.ts";
import { psnr, ssim } from "../pipeline/similarity.ts";
import { TaskError } from "./errors.ts";

/** What a response reports of each adapter it ran with. */
export interface AdapterReport {
  repo: string;
  file: string;
  revision: string;
  commit: string;
  scale: number;
  format: string;
  applied_modules: number;
  not_applied?: string[];
  not_applied_count?: number;
}

/** A latent as tasks take and give it: x_T of one image. */
export interface Latent {
  latent: Float32Array;
  shape: LatentShape;
}

/** A task's input names its adapters (`lora`); the pipeline takes them resolved (`adapters`). */
type WithAdapterSpecs<P> = Omit<P, "adapters"> & { lora: AdapterSpec[] };

export type GenerateInput = WithAdapterSpecs<GenerateParams>;

export type InvertInput = WithAdapterSpecs<InvertImageParams>;

export interface EditInput {
  /** The image to edit, inverted first, or its latent x_T. */
  source: { image: RgbImage } | Latent;
  sourcePrompt: string;
  targetPrompt: string;
  ratio: number;
  steps: number;
  method: InversionMethod;
  guidanceScale: number;
  /** Also return the source rebuilt from its latent (the edit at ratio 0). */
  returnReconstruction: boolean;
  lora: AdapterSpec[];
}

/** An interpolation endpoint: a seed's noise, a latent, or an image to invert; with its prompt. */
export type EndpointInput = { prompt: string } & ({ seed: number } | Latent | { image: RgbImage });

export interface InterpolateInput {
  from: EndpointInput;
  to: EndpointInput;
  /** The latent size of endpoints drawn from a seed. */
  shape: LatentShape;
  frames: number;
  steps: number;
  method: InversionMethod;
  guidanceScale: number;
  lora: AdapterSpec[];
}

export interface Similarity {
  psnr: number;
  ssim: number;
}

export interface Reported {
  adapters: AdapterReport[];
  timings: Timings;
}

export interface GenerateOutput extends Reported {
  images: { image: RgbImage; seed: number }[];
}

export interface InvertOutput extends Reported, Latent {
  reconstruction: RgbImage;
  metrics: { psnr: number; ssim: number; upper_bound: Similarity; vs_vae_reconstruction: Similarity };
}

export interface EditOutput extends Reported, Latent {
  image: RgbImage;
  reconstruction?: RgbImage;
}

export interface InterpolateOutput extends Reported {
  frames: RgbImage[];
  distances: number[];
  istd: number;
}

/** The status each registry failure answers with; every one names the `lora` field. */
const REGISTRY_STATUS: Record<RegistryErrorCode, 403 | 404 | 413 | 422 | 502 | 504> = {
  adapter_not_allowed: 403,
  adapter_forbidden: 403,
  adapter_not_found: 404,
  adapter_not_cached: 404,
  adapter_too_large: 413,
  adapter_file_ambiguous: 422,
  hub_unavailable: 502,
  hub_timeout: 504,
};

interface Resolved {
  applied: AppliedAdapter[];
  report: AdapterReport[];
  release: () => void;
}

async function resolveAdapters(registry: AdapterRegistry, specs: AdapterSpec[], ctx: TaskContext) {
  if (specs.length === 0) return { applied: [], report: [], release: () => {} } satisfies Resolved;
  return await stage(ctx, "adapter.resolve", async (): Promise<Resolved> => {
    try {
      const { applied, release } = await registry.acquire(specs);
      const report = applied.map(({ adapter, scale }) => ({
        repo: adapter.source.repo,
        file: adapter.source.file,
        revision: adapter.source.revision,
        commit: adapter.source.commit,
        scale,
        format: adapter.format,
        applied_modules: adapter.modules.size,
        // keys that are not UNet attention LoRA weights (text encoder, other layers): reported, not applied
        ...(adapter.ignored.length
          ? { not_applied: adapter.ignored.slice(0, 20), not_applied_count: adapter.ignored.length }
          : {}),
      }));
      return { applied, report, release };
    } catch (error) {
      if (error instanceof RegistryError) {
        throw new TaskError(REGISTRY_STATUS[error.code], error.code, error.message, "lora");
      }
      if (error instanceof AdapterError) throw new TaskError(422, error.code, error.message, "lora");
      throw error;
    }
  }, { adapters: specs.length });
}

const round = (v: number, digits = 4) => Number.isFinite(v) ? Number(v.toFixed(digits)) : v;
const similarity = (a: RgbImage, b: RgbImage): Similarity => ({
  psnr: round(psnr(a, b)),
  ssim: round(ssim(a, b)),
});

/** The tasks of one model and its adapter registry. */
export class Tasks {
  constructor(readonly model: DiffusionModel, readonly registry: AdapterRegistry) {}

  /** Runs `fn` as one task with the request's adapters held; its result reports them and its timings. */
  async #run<T>(
    specs: AdapterSpec[],
    ctx: TaskContext,
    fn: (adapters: AppliedAdapter[], task: TaskContext) => Promise<T>,
  ): Promise<T & Reported> {
    const clock = new StageClock();
    const task = { ...ctx, clock };
    const { applied, report, release } = await resolveAdapters(this.registry, specs, task);
    try {
      return { ...await fn(applied, task), adapters: report, timings: clock.timings() };
    } finally {
      release();
    }
  }

  generate(input: GenerateInput, ctx: TaskContext): Promise<GenerateOutput> {
    const { lora, ...params } = input;
    return this.#run(lora, ctx, (adapters, task) => generate(this.model, { ...params, adapters }, task));
  }

  invert(input: InvertInput, ctx: TaskContext): Promise<InvertOutput> {
    const { lora, ...params } = input;
    return this.#run(lora, ctx, async (adapters, task) => {
      const result = await invertImage(this.model, { ...params, adapters }, task);
      return {
        latent: result.latent,
        shape: result.shape,
        reconstruction: result.reconstruction,
        metrics: {
          ...similarity(result.reconstruction, input.image),
          upper_bound: similarity(result.vaeReconstruction, input.image),
          vs_vae_reconstruction: similarity(result.reconstruction, result.vaeReconstruction),
        },
      };
    });
  }

  /**
   * Paper Eq. 15 from an image (inverted under the source prompt) or from its latent. The
   * reconstruction is the inversion's own when the image was inverted, else the edit at ratio 0.
   */
  edit(input: EditInput, ctx: TaskContext): Promise<EditOutput> {
    const { lora, source } = input;
    return this.#run(lora, ctx, async (adapters, task) => {
      let start: Latent, reconstruction: RgbImage | undefined;
      if ("image" in source && input.returnReconstruction) {
        const inverted = await invertImage(this.model, {
          image: source.image,
          prompt: input.sourcePrompt,
          steps: input.steps,
          method: input.method,
          guidanceScale: input.guidanceScale,
          adapters,
        }, task);
        start = { latent: inverted.latent, shape: inverted.shape };
        reconstruction = inverted.reconstruction;
      } else if ("image" in source) {
        const [cond] = await encodePrompts(this.model, [input.sourcePrompt], task);
        start = await invertToNoise(this.model, {
          image: source.image,
          cond,
          steps: input.steps,
          method: input.method,
          adapters,
        }, task);
      } else {
        start = source;
      }
      const edited = await edit(this.model, {
        ...start,
        sourcePrompt: input.sourcePrompt,
        targetPrompt: input.targetPrompt,
        ratio: input.ratio,
        steps: input.steps,
        guidanceScale: input.guidanceScale,
        adapters,
      }, task);
      if (reconstruction === undefined && input.returnReconstruction) {
        reconstruction = (await edit(this.model, {
          ...start,
          sourcePrompt: input.sourcePrompt,
          targetPrompt: input.sourcePrompt,
          ratio: 0,
          steps: input.steps,
          guidanceScale: input.guidanceScale,
          adapters,
        }, task)).image;
      }
      return { image: edited.image, reconstruction, ...start };
    });
  }

  interpolate(input: InterpolateInput, ctx: TaskContext): Promise<InterpolateOutput> {
    return this.#run(input.lora, ctx, async (adapters, task) => {
      const [fromEmbedding, toEmbedding, uncond] = await encodePrompts(this.model, [
        input.from.prompt,
        input.to.prompt,
        "",
      ], task);
      const endpoint = async (end: EndpointInput, embedding: Float32Array): Promise<Endpoint> => {
        if ("seed" in end) {
          return {
            latent: initialNoise(this.model, [end.seed], input.shape.height, input.shape.width),
            embedding,
          };
        }
        if ("latent" in end) return { latent: end.latent, embedding };
        const { latent } = await invertToNoise(this.model, {
          image: end.image,
          cond: embedding,
          steps: input.steps,
          method: input.method,
          adapters,
        }, task);
        return { latent, embedding };
      };
      const [from, to] = await Promise.all([
        endpoint(input.from, fromEmbedding),
        endpoint(input.to, toEmbedding),
      ]);
      const shape = "shape" in input.from
        ? input.from.shape
        : "shape" in input.to
        ? input.to.shape
        : input.shape;
      return await interpolate(this.model, {
        from,
        to,
        shape,
        frames: input.frames,
        steps: input.steps,
        guidanceScale: input.guidanceScale,
        uncond,
        adapters,
      }, task);
    });
  }

  /** The adapters the Hub caches hold, as a request would find them. */
  cachedAdapters() {
    return this.registry.cachedAdapters();
  }
}
