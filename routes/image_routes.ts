/** POST /invert, /edit and /interpolate: the paper's downstream tasks over images and latents. */
import type { Context } from "hono";
import type { z } from "zod";
import { ApiError } from "./errors.ts";
import { startTask } from "./adapters.ts";
import type { Admission } from "./admission.ts";
import type {
  editRequestSchema,
  interpolateRequestSchema,
  invertRequestSchema,
  latentSchema,
} from "./schemas.ts";
import type { DiffusionModel } from "../pipeline/model.ts";
import type { AdapterRegistry } from "../loras/registry.ts";
import { encodeImage, type OutputFormat, type RgbImage } from "../pipeline/image.ts";
import { type FitMode, ImageInputError, type ImageLimits, readImageInput } from "../pipeline/image_input.ts";
import { decodeLatent, encodeLatent, LatentError } from "../pipeline/latent_codec.ts";
import { invertImage, invertToNoise } from "../pipeline/invert.ts";
import { psnr, ssim } from "../pipeline/metrics.ts";
import { edit } from "../pipeline/edit.ts";
import { type Endpoint, interpolate } from "../pipeline/interpolate.ts";
import { encodePrompts, initialNoise, type LatentShape, type TaskContext } from "../pipeline/generate.ts";
import { inSpan, type Span } from "../telemetry.ts";
import sharp from "sharp";

export interface ImageRouteDeps {
  model: DiffusionModel;
  admission: Admission;
  registry: AdapterRegistry;
  imageLimits: ImageLimits;
  maxPixels: number;
}

const IMAGE_ERRORS = {
  undecodable: [400, "invalid_image"],
  too_large: [413, "image_too_large"],
  unsupported: [415, "unsupported_image"],
} as const;

/** The requested pixel size, or the model's native one. */
function sizeOf(deps: ImageRouteDeps, body: { width?: number; height?: number }) {
  return {
    width: body.width ?? deps.model.info.nativeWidth,
    height: body.height ?? deps.model.info.nativeHeight,
  };
}

/** An uploaded image fitted to `size`, its faults mapped to 400, 413 and 415 naming `field`. */
export async function readImage(
  deps: Pick<ImageRouteDeps, "imageLimits">,
  field: string,
  text: string,
  fit: FitMode,
  size: { width: number; height: number },
): Promise<RgbImage> {
  try {
    return await readImageInput(text, size.width, size.height, fit, deps.imageLimits);
  } catch (error) {
    if (!(error instanceof ImageInputError)) throw error;
    const [status, code] = IMAGE_ERRORS[error.kind];
    throw new ApiError(status, code, `${field}: ${error.message}`, field);
  }
}

function readLatent(
  deps: ImageRouteDeps,
  field: string,
  wire: z.infer<typeof latentSchema>,
): { latent: Float32Array; shape: LatentShape } {
  const [n, c, h, w] = wire.shape;
  if (n !== 1 || c !== deps.model.info.latentChannels) {
    throw new ApiError(
      400,
      "invalid_latent",
      `${field}: shape must be [1, ${deps.model.info.latentChannels}, h, w]`,
      field,
    );
  }
  if (h * w * 64 > deps.maxPixels) {
    throw new ApiError(
      400,
      "limit_exceeded",
      `${field}: decodes to more than ${deps.maxPixels} pixels`,
      field,
    );
  }
  const needed = deps.model.runTooLarge(w * 8, h * 8, 2, 1);
  if (needed !== undefined) {
    throw new ApiError(
      400,
      "limit_exceeded",
      `${field}: one model run at this size needs about ${(needed / 2 ** 30).toFixed(2)} GiB; the memory ` +
        `budget is ${(deps.model.memory.budgetBytes / 2 ** 30).toFixed(2)} GiB (MEMORY_BUDGET_BYTES)`,
      field,
    );
  }
  try {
    return { latent: decodeLatent(wire), shape: { rows: 1, height: h, width: w } };
  } catch (error) {
    if (!(error instanceof LatentError)) throw error; // the server's fault, not the latent's
    throw new ApiError(400, "invalid_latent", `${field}: ${error.message}`, field);
  }
}

async function imageJson(image: RgbImage, format: OutputFormat) {
  return {
    data: (await encodeImage(image, format)).toBase64(),
    format,
    width: image.width,
    height: image.height,
  };
}

const round = (v: number, digits = 4) => Number.isFinite(v) ? Number(v.toFixed(digits)) : v;
const similarity = (a: RgbImage, b: RgbImage) => ({ psnr: round(psnr(a, b)), ssim: round(ssim(a, b)) });

function latentJson(latent: Float32Array, shape: LatentShape) {
  return encodeLatent(latent, [
    shape.rows,
    latent.length / (shape.rows * shape.height * shape.width),
    shape.height,
    shape.width,
  ]);
}

export async function handleInvert(
  c: Context,
  deps: ImageRouteDeps,
  body: z.infer<ReturnType<typeof invertRequestSchema>>,
  span: Span,
) {
  const { adapters, release, prepared: image } = await startTask(
    deps.admission,
    deps.registry,
    body.lora,
    span,
    () => readImage(deps, "image", body.image, body.fit, sizeOf(deps, body)),
  );
  try {
    const ctx: TaskContext = { signal: c.get("signal") ?? c.req.raw.signal, span };
    const result = await invertImage(deps.model, {
      image,
      prompt: body.prompt,
      steps: body.steps,
      method: body.method,
      guidanceScale: body.guidance_scale,
      adapters: adapters.applied,
    }, ctx);
    const reconstruction = await inSpan(
      "image.encode",
      span,
      () => imageJson(result.reconstruction, body.output_format),
    );
    const { image: _image, lora: _lora, ...echoed } = body;
    return c.json({
      latent: latentJson(result.latent, result.shape),
      reconstruction,
      metrics: {
        ...similarity(result.reconstruction, image),
        upper_bound: similarity(result.vaeReconstruction, image),
        vs_vae_reconstruction: similarity(result.reconstruction, result.vaeReconstruction),
      },
      parameters: { ...echoed, ...(adapters.report.length ? { lora: adapters.report } : {}) },
      timings: result.timings,
    });
  } finally {
    release();
  }
}

export async function handleEdit(
  c: Context,
  deps: ImageRouteDeps,
  body: z.infer<ReturnType<typeof editRequestSchema>>,
  span: Span,
) {
  const given = body.latent === undefined ? undefined : readLatent(deps, "latent", body.latent);
  const encoded = body.image;
  const { adapters, release, prepared: image } = await startTask(
    deps.admission,
    deps.registry,
    body.lora,
    span,
    async () =>
      encoded === undefined
        ? undefined
        : await readImage(deps, "image", encoded, body.fit, sizeOf(deps, body)),
  );
  try {
    const ctx: TaskContext = { signal: c.get("signal") ?? c.req.raw.signal, span };
    let start = given, reconstruction: RgbImage | undefined;
    if (image && body.return_reconstruction) {
      const inverted = await invertImage(deps.model, {
        image,
        prompt: body.source_prompt,
        steps: body.steps,
        method: body.method,
        guidanceScale: body.guidance_scale,
        adapters: adapters.applied,
      }, ctx);
      start = { latent: inverted.latent, shape: inverted.shape };
      reconstruction = inverted.reconstruction;
    } else if (image) {
      const [cond] = await encodePrompts(deps.model, [body.source_prompt], ctx);
      start = await invertToNoise(deps.model, {
        image,
        cond,
        steps: body.steps,
        method: body.method,
        adapters: adapters.applied,
      }, ctx);
    }
    const edited = await edit(deps.model, {
      latent: start!.latent,
      shape: start!.shape,
      sourcePrompt: body.source_prompt,
      targetPrompt: body.target_prompt,
      ratio: body.ratio,
      steps: body.steps,
      guidanceScale: body.guidance_scale,
      adapters: adapters.applied,
    }, ctx);
    if (reconstruction === undefined && body.return_reconstruction) {
      reconstruction = (await edit(deps.model, {
        latent: start!.latent,
        shape: start!.shape,
        sourcePrompt: body.source_prompt,
        targetPrompt: body.source_prompt,
        ratio: 0,
        steps: body.steps,
        guidanceScale: body.guidance_scale,
        adapters: adapters.applied,
      }, ctx)).image;
    }
    const { image: _image, latent: _latent, lora: _lora, ...echoed } = body;
    return c.json({
      images: [await imageJson(edited.image, body.output_format)],
      ...(reconstruction ? { reconstruction: await imageJson(reconstruction, body.output_format) } : {}),
      latent: latentJson(start!.latent, start!.shape),
      parameters: { ...echoed, ...(adapters.report.length ? { lora: adapters.report } : {}) },
      timings: edited.timings,
    });
  } finally {
    release();
  }
}

type InterpolateBody = z.infer<ReturnType<typeof interpolateRequestSchema>>;
/** An /interpolate endpoint once read: a seed's noise, a latent, or an image to invert. */
type EndpointSource = { seed?: number } | { latent: Float32Array; shape: LatentShape } | { image: RgbImage };

export async function handleInterpolate(c: Context, deps: ImageRouteDeps, body: InterpolateBody, span: Span) {
  const model = deps.model;
  const size = sizeOf(deps, body);
  const drawn: LatentShape = { rows: 1, height: size.height / 8, width: size.width / 8 };
  // The cheap checks before taking a slot; images are decoded once admitted.
  const names = ["from", "to"] as const;
  const ends: (EndpointSource | { encoded: string })[] = names.map((name) => {
    const end = body[name];
    if ("image" in end) return { encoded: end.image };
    if ("latent" in end) return readLatent(deps, `${name}.latent`, end.latent);
    return { seed: end.seed };
  });
  const shapes = ends.map((s) => ("shape" in s && s.shape) ? s.shape : drawn);
  if (shapes[0].height !== shapes[1].height || shapes[0].width !== shapes[1].width) {
    throw new ApiError(400, "invalid_request", "to: both endpoints must have the same latent size", "to");
  }
  const { adapters, release, prepared: sources } = await startTask(
    deps.admission,
    deps.registry,
    body.lora,
    span,
    () =>
      Promise.all(
        ends.map(async (end, i): Promise<EndpointSource> =>
          "encoded" in end
            ? { image: await readImage(deps, `${names[i]}.image`, end.encoded, body.fit, size) }
            : end
        ),
      ),
  );
  try {
    const ctx: TaskContext = { signal: c.get("signal") ?? c.req.raw.signal, span };
    const [fromEmbedding, toEmbedding, uncond] = await encodePrompts(model, [
      body.from.prompt,
      body.to.prompt,
      "",
    ], ctx);
    const embeddings = [fromEmbedding, toEmbedding];
    const endpoints: Endpoint[] = await Promise.all(sources.map(async (s, i) => {
      if ("seed" in s && s.seed !== undefined) {
        return {
          latent: initialNoise(model, [s.seed], drawn.height, drawn.width),
          embedding: embeddings[i],
        };
      }
      if ("latent" in s && s.latent) return { latent: s.latent, embedding: embeddings[i] };
      const image = (s as { image: RgbImage }).image;
      const { latent } = await invertToNoise(model, {
        image,
        cond: embeddings[i],
        steps: body.steps,
        method: body.method,
        adapters: adapters.applied,
      }, ctx);
      return { latent, embedding: embeddings[i] };
    }));
    const result = await interpolate(model, {
      from: endpoints[0],
      to: endpoints[1],
      shape: shapes[0],
      frames: body.frames,
      steps: body.steps,
      guidanceScale: body.guidance_scale,
      uncond,
      adapters: adapters.applied,
    }, ctx);
    const frames = await inSpan(
      "image.encode",
      span,
      () => Promise.all(result.frames.map((f) => imageJson(f, body.output_format))),
    );
    const animation = body.animation === "none"
      ? undefined
      : await animate(result.frames, body.animation, body.frame_duration_ms);
    const { lora: _lora, from, to, ...echoed } = body;
    const describe = (
      e: typeof from,
    ) => ("seed" in e
      ? { prompt: e.prompt, seed: e.seed }
      : { prompt: e.prompt, source: "image" in e ? "image" : "latent" });
    return c.json({
      frames,
      distances: result.distances.map((d) => round(d, 6)),
      istd: round(result.istd, 6),
      pixel_range: [0, 1],
      ...(animation ? { animation } : {}),
      parameters: {
        ...echoed,
        from: describe(from),
        to: describe(to),
        ...(adapters.report.length ? { lora: adapters.report } : {}),
      },
      timings: result.timings,
    });
  } finally {
    release();
  }
}

async function animate(frames: RgbImage[], format: "webp" | "gif", durationMs: number) {
  const { width, height } = frames[0];
  const stacked = new Uint8Array(frames.length * width * height * 3);
  frames.forEach((f, i) => stacked.set(f.data, i * f.data.length));
  const base = sharp(stacked, {
    raw: { width, height: height * frames.length, channels: 3, pageHeight: height } as never,
    // the frames are the server's own, their size checked at validation; sharp's default cap
    // (0x3FFF x 0x3FFF pixels) would refuse a long strip of large frames after the model ran
    limitInputPixels: false,
  });
  const delay = frames.map(() => durationMs);
  const bytes =
    await (format === "webp" ? base.webp({ loop: 0, delay, lossless: true }) : base.gif({ loop: 0, delay }))
      .toBuffer();
  return { format, data: (new Uint8Array(bytes)).toBase64() };
}
