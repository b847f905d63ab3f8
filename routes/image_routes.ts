/** POST /invert, /edit and /interpolate: the paper's downstream tasks over images and latents. */
import type { Context } from "hono";
import type { z } from "zod";
import { ApiError } from "./errors.ts";
import type { Admission } from "./admission.ts";
import type {
  editRequestSchema,
  interpolateRequestSchema,
  invertRequestSchema,
  latentSchema,
  loraFieldSchema,
} from "./schemas.ts";
import type { EngineClient } from "../engine/client.ts";
import type { EndpointInput, Latent } from "../engine/tasks.ts";
import type { AdapterSpec } from "../loras/registry.ts";
import { runTooLarge } from "../pipeline/cost.ts";
import { encodeImage, type OutputFormat, type RgbImage } from "../pipeline/image.ts";
import { type FitMode, ImageInputError, type ImageLimits, readImageInput } from "../pipeline/image_input.ts";
import { decodeLatent, encodeLatent, LatentError } from "../pipeline/latent_codec.ts";
import type { LatentShape } from "../pipeline/denoise.ts";
import { stage, StageClock } from "../pipeline/stage.ts";
import type { Span } from "../telemetry.ts";
import sharp from "sharp";

/** What the task routes use: the engine, admission, and the limits on uploaded images. */
export interface TaskRouteDeps {
  engine: EngineClient;
  admission: Admission;
  imageLimits: ImageLimits;
  maxPixels: number;
}

/** A request's `lora` field as the engine takes it: a list, empty for none. */
export function adapterSpecs(lora: z.infer<typeof loraFieldSchema>): AdapterSpec[] {
  return lora === undefined ? [] : Array.isArray(lora) ? lora : [lora];
}

const signalOf = (c: Context): AbortSignal => c.get("signal") ?? c.req.raw.signal;

const IMAGE_ERRORS = {
  undecodable: [400, "invalid_image"],
  too_large: [413, "image_too_large"],
  unsupported: [415, "unsupported_image"],
} as const;

/** The requested pixel size, or the model's native one. */
function sizeOf(deps: TaskRouteDeps, body: { width?: number; height?: number }) {
  return {
    width: body.width ?? deps.engine.info.model.nativeWidth,
    height: body.height ?? deps.engine.info.model.nativeHeight,
  };
}

/** An uploaded image fitted to `size`, its faults mapped to 400, 413 and 415 naming `field`. */
export async function readImage(
  deps: Pick<TaskRouteDeps, "imageLimits">,
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
  deps: TaskRouteDeps,
  field: string,
  wire: z.infer<typeof latentSchema>,
): Latent {
  const [n, c, h, w] = wire.shape;
  if (n !== 1 || c !== deps.engine.info.model.latentChannels) {
    throw new ApiError(
      400,
      "invalid_latent",
      `${field}: shape must be [1, ${deps.engine.info.model.latentChannels}, h, w]`,
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
  const needed = runTooLarge(deps.engine.info.memory, w * 8, h * 8, 2, 1);
  if (needed !== undefined) {
    throw new ApiError(
      400,
      "limit_exceeded",
      `${field}: one model run at this size needs about ${(needed / 2 ** 30).toFixed(2)} GiB; the memory ` +
        `budget is ${(deps.engine.info.memory.budgetBytes / 2 ** 30).toFixed(2)} GiB (MEMORY_BUDGET_BYTES)`,
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

const round = (v: number, digits: number) => Number.isFinite(v) ? Number(v.toFixed(digits)) : v;

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
  deps: TaskRouteDeps,
  body: z.infer<ReturnType<typeof invertRequestSchema>>,
  span: Span,
) {
  const { release, prepared: image } = await deps.admission.admit(() =>
    readImage(deps, "image", body.image, body.fit, sizeOf(deps, body))
  );
  try {
    const result = await deps.engine.call("invert", {
      image,
      prompt: body.prompt,
      steps: body.steps,
      method: body.method,
      guidanceScale: body.guidance_scale,
      lora: adapterSpecs(body.lora),
    }, { signal: signalOf(c), span });
    const clock = new StageClock(result.timings);
    const reconstruction = await stage(
      { span, clock },
      "image.encode",
      () => imageJson(result.reconstruction, body.output_format),
    );
    const { image: _image, lora: _lora, ...echoed } = body;
    return c.json({
      latent: latentJson(result.latent, result.shape),
      reconstruction,
      metrics: result.metrics,
      parameters: { ...echoed, ...(result.adapters.length ? { lora: result.adapters } : {}) },
      timings: clock.timings(),
    });
  } finally {
    release();
  }
}

export async function handleEdit(
  c: Context,
  deps: TaskRouteDeps,
  body: z.infer<ReturnType<typeof editRequestSchema>>,
  span: Span,
) {
  const given = body.latent === undefined ? undefined : readLatent(deps, "latent", body.latent);
  const encoded = body.image;
  const { release, prepared: image } = await deps.admission.admit(async () =>
    encoded === undefined ? undefined : await readImage(deps, "image", encoded, body.fit, sizeOf(deps, body))
  );
  try {
    const result = await deps.engine.call("edit", {
      source: image ? { image } : given!,
      sourcePrompt: body.source_prompt,
      targetPrompt: body.target_prompt,
      ratio: body.ratio,
      steps: body.steps,
      method: body.method,
      guidanceScale: body.guidance_scale,
      returnReconstruction: body.return_reconstruction,
      lora: adapterSpecs(body.lora),
    }, { signal: signalOf(c), span });
    const { image: _image, latent: _latent, lora: _lora, ...echoed } = body;
    const clock = new StageClock(result.timings);
    const [edited, reconstruction] = await stage(
      { span, clock },
      "image.encode",
      () =>
        Promise.all([
          imageJson(result.image, body.output_format),
          result.reconstruction && imageJson(result.reconstruction, body.output_format),
        ]),
    );
    return c.json({
      images: [edited],
      ...(reconstruction ? { reconstruction } : {}),
      latent: latentJson(result.latent, result.shape),
      parameters: { ...echoed, ...(result.adapters.length ? { lora: result.adapters } : {}) },
      timings: clock.timings(),
    });
  } finally {
    release();
  }
}

type InterpolateBody = z.infer<ReturnType<typeof interpolateRequestSchema>>;

export async function handleInterpolate(c: Context, deps: TaskRouteDeps, body: InterpolateBody, span: Span) {
  const size = sizeOf(deps, body);
  const drawn: LatentShape = { rows: 1, height: size.height / 8, width: size.width / 8 };
  // The cheap checks before taking a slot; images are decoded once admitted.
  const names = ["from", "to"] as const;
  const ends = names.map((name): EndpointInput | { prompt: string; encoded: string } => {
    const end = body[name];
    if ("image" in end) return { prompt: end.prompt, encoded: end.image };
    if ("latent" in end) return { prompt: end.prompt, ...readLatent(deps, `${name}.latent`, end.latent) };
    return { prompt: end.prompt, seed: end.seed };
  });
  const shapes = ends.map((s) => ("shape" in s ? s.shape : drawn));
  if (shapes[0].height !== shapes[1].height || shapes[0].width !== shapes[1].width) {
    throw new ApiError(400, "invalid_request", "to: both endpoints must have the same latent size", "to");
  }
  const { release, prepared: [from, to] } = await deps.admission.admit(() =>
    Promise.all(
      ends.map(async (end, i): Promise<EndpointInput> =>
        "encoded" in end
          ? {
            prompt: end.prompt,
            image: await readImage(deps, `${names[i]}.image`, end.encoded, body.fit, size),
          }
          : end
      ),
    )
  );
  try {
    const result = await deps.engine.call("interpolate", {
      from,
      to,
      shape: drawn,
      frames: body.frames,
      steps: body.steps,
      method: body.method,
      guidanceScale: body.guidance_scale,
      lora: adapterSpecs(body.lora),
    }, { signal: signalOf(c), span });
    const clock = new StageClock(result.timings);
    const frames = await stage(
      { span, clock },
      "image.encode",
      () => Promise.all(result.frames.map((f) => imageJson(f, body.output_format))),
    );
    const animation = body.animation === "none"
      ? undefined
      : await animate(result.frames, body.animation, body.frame_duration_ms);
    const { lora: _lora, from: fromBody, to: toBody, ...echoed } = body;
    const describe = (
      e: typeof fromBody,
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
        from: describe(fromBody),
        to: describe(toBody),
        ...(result.adapters.length ? { lora: result.adapters } : {}),
      },
      timings: clock.timings(),
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
