/** POST /generate: JSON in; JSON, a raw image, or server-sent progress events out. */
import type { Context } from "hono";
import { streamSSE } from "hono/streaming";
import { ApiError, errorBody } from "./errors.ts";
import type { Admission } from "./admission.ts";
import { startTask } from "./adapters.ts";
import { clientLeft, isClientGone, isDeadline, isShutdown, SHUTDOWN_ERROR, workContinues } from "./access.ts";
import type { AdapterRegistry } from "../loras/registry.ts";
import type { GenerateRequest } from "./schemas.ts";
import { generate, type GenerateResult } from "../pipeline/generate.ts";
import { encodeImage, MIME_TYPES, type OutputFormat } from "../pipeline/image.ts";
import { randomSeed } from "../pipeline/rng.ts";
import type { DiffusionModel } from "../pipeline/model.ts";
import type { ImageLimits } from "../pipeline/image_input.ts";
import { readImage } from "./image_routes.ts";
import { jobProgress } from "./jobs.ts";
import { inSpan, type Span } from "../telemetry.ts";

type Reply = "json" | "sse" | OutputFormat;

/** Accept's media ranges with their weights (RFC 9110, 12.5.1), in the order given. */
function acceptRanges(accept: string): { type: string; q: number }[] {
  return accept.split(",").slice(0, 64).map((part) => {
    const [type, ...params] = part.split(";").map((p) => p.trim().toLowerCase());
    const q = params.map((p) => /^q\s*=\s*([0-9.]+)$/.exec(p)?.[1]).find((v) => v !== undefined);
    const weight = q === undefined ? 1 : Number(q);
    return { type, q: Number.isFinite(weight) ? Math.min(1, weight) : 1 };
  }).filter((range) => range.type !== "");
}

/**
 * The reply Accept asks for, by weight (q=0 refuses a type). A stream or raw image bytes only when
 * named; JSON also by `application/*` or `* / *`, and when Accept names nothing this route makes.
 * Equal weights prefer the stream, then JSON, then the image types in Accept's order; raw bytes
 * carry one image, so with several JSON is the reply if Accept allows it, else 406.
 */
export function negotiate(accept: string | undefined, numImages: number): Reply {
  const ranges = acceptRanges(accept ?? "");
  const named = (mime: string) => ranges.find((r) => r.type === mime);
  const json = named("application/json") ?? named("application/*") ?? named("*/*");
  const options: { reply: Reply; q: number; rank: number }[] = [];
  const sse = named("text/event-stream");
  if (sse) options.push({ reply: "sse", q: sse.q, rank: 0 });
  if (json) options.push({ reply: "json", q: json.q, rank: 1 });
  for (const [format, mime] of Object.entries(MIME_TYPES) as [OutputFormat, string][]) {
    const range = named(mime);
    if (range) options.push({ reply: format, q: range.q, rank: 2 + ranges.indexOf(range) });
  }
  const acceptable = options.filter((o) => o.q > 0).sort((a, b) => b.q - a.q || a.rank - b.rank);
  const fits = acceptable.filter((o) => o.rank < 2 || numImages === 1);
  if (fits.length > 0) return fits[0].reply;
  if (acceptable.length > 0) {
    throw new ApiError(
      406,
      "not_acceptable",
      "a raw image reply carries one image: set num_images to 1 or accept application/json",
      "num_images",
    );
  }
  if (json === undefined) return "json"; // Accept names nothing this route makes: JSON, as with none
  throw new ApiError(
    406,
    "not_acceptable",
    "Accept allows none of the replies: application/json, text/event-stream, image/png, image/webp, image/jpeg",
  );
}

export async function encodeImages(result: GenerateResult, format: OutputFormat, span?: Span) {
  return await inSpan("image.encode", span, () =>
    Promise.all(result.images.map(async ({ image, seed }) => ({
      bytes: await encodeImage(image, format),
      seed,
      width: image.width,
      height: image.height,
    }))), { format, images: result.images.length });
}

export async function handleGenerate(
  c: Context,
  model: DiffusionModel,
  body: GenerateRequest,
  span: Span,
  admission: Admission,
  registry: AdapterRegistry,
  imageLimits: ImageLimits,
  accept = c.req.header("accept"),
) {
  const reply = negotiate(accept, body.num_images);
  if (body.image !== undefined && !model.info.canEncodeImages) {
    throw new ApiError(400, "invalid_request", "image: this model has no VAE encoder for img2img", "image");
  }
  // img2img's image is decoded once admitted, like every uploaded image
  const { adapters, release, prepared: initImage } = await startTask(
    admission,
    registry,
    body.lora,
    span,
    () =>
      body.image === undefined
        ? Promise.resolve(undefined)
        : readImage({ imageLimits }, "image", body.image, body.fit, body),
  );
  const seed = body.seed ?? randomSeed();
  const params = {
    prompt: body.prompt,
    negativePrompt: body.negative_prompt,
    width: body.width,
    height: body.height,
    steps: body.steps,
    guidanceScale: body.guidance_scale,
    seed,
    scheduler: body.scheduler,
    numImages: body.num_images,
    adapters: adapters.applied,
    init: initImage && { image: initImage, strength: body.strength ?? 0.8 },
  };
  const { lora: _lora, image: _image, ...echoed } = body;
  const parameters = {
    ...echoed,
    seed,
    ...(params.init ? { strength: params.init.strength } : {}),
    ...(adapters.report.length ? { lora: adapters.report } : {}),
  };
  const signal: AbortSignal = c.get("signal") ?? c.req.raw.signal;
  const format = reply === "json" || reply === "sse" ? body.output_format : reply;

  const run = async (onProgress?: (step: number, total: number) => void) => {
    const started = performance.now();
    const result = await generate(model, params, { signal, span, onProgress });
    const encodeStart = performance.now();
    const encoded = await encodeImages(result, format, span);
    result.timings.image_encode_ms = Math.round((performance.now() - encodeStart) * 10) / 10;
    result.timings.total_ms = Math.round((performance.now() - started) * 10) / 10;
    return { encoded, timings: result.timings };
  };
  const jsonBody = ({ encoded, timings }: Awaited<ReturnType<typeof run>>) => ({
    images: encoded.map((e) => ({
      data: e.bytes.toBase64(),
      seed: e.seed,
      format,
      width: e.width,
      height: e.height,
    })),
    parameters: { ...parameters, output_format: format },
    timings,
  });

  if (reply === "sse") {
    const done = workContinues(c); // the deadline holds until the stream ends
    return streamSSE(c, async (stream) => {
      stream.onAbort(() => clientLeft(c));
      try {
        let writes = Promise.resolve();
        const outcome = await run((step, total) => {
          writes = writes.then(() =>
            stream.writeSSE({ event: "progress", data: JSON.stringify({ step, total }) })
          );
        });
        await writes;
        await stream.writeSSE({ event: "result", data: JSON.stringify(jsonBody(outcome)) });
      } catch (error) {
        if (isDeadline(c, error)) {
          await stream.writeSSE({
            event: "error",
            data: JSON.stringify(errorBody("deadline_exceeded", "the request ran past its deadline")),
          });
        } else if (isShutdown(c, error)) {
          await stream.writeSSE({
            event: "error",
            data: JSON.stringify(errorBody(SHUTDOWN_ERROR.code, SHUTDOWN_ERROR.message)),
          });
        } else if (!isClientGone(c)) {
          console.error(error);
          await stream.writeSSE({
            event: "error",
            data: JSON.stringify(errorBody("internal", "internal error")),
          });
        }
      } finally {
        release();
        done();
      }
    });
  }
  try {
    const outcome = await run(jobProgress(c));
    if (reply === "json") return c.json(jsonBody(outcome));
    c.header("X-Seed", String(outcome.encoded[0].seed));
    return c.body(outcome.encoded[0].bytes as Uint8Array<ArrayBuffer>, 200, {
      "Content-Type": MIME_TYPES[reply],
    });
  } finally {
    release();
  }
}
