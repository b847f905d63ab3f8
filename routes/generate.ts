/** POST /generate: JSON in; JSON, a raw image, or server-sent progress events out. */
import type { Context } from "hono";
import { streamSSE } from "hono/streaming";
import { ApiError, asApiError, errorBody } from "./errors.ts";
import { clientLeft, isClientGone, isDeadline, isShutdown, SHUTDOWN_ERROR, workContinues } from "./access.ts";
import type { GenerateRequest } from "./schemas.ts";
import { encodeImage, MIME_TYPES, type OutputFormat, type RgbImage } from "../pipeline/image.ts";
import { randomSeed } from "../pipeline/rng.ts";
import { adapterSpecs, readImage, type TaskRouteDeps } from "./image_routes.ts";
import { jobProgress } from "./jobs.ts";
import { stage, StageClock, type TaskContext } from "../pipeline/stage.ts";
import type { Span } from "../telemetry.ts";

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

export async function encodeImages(
  images: { image: RgbImage; seed: number }[],
  format: OutputFormat,
  ctx: TaskContext,
) {
  return await stage(ctx, "image.encode", () =>
    Promise.all(images.map(async ({ image, seed }) => ({
      bytes: await encodeImage(image, format),
      seed,
      width: image.width,
      height: image.height,
    }))), { format, images: images.length });
}

/** The error event a stream ends with when its work fails. */
function streamError(c: Context, error: unknown) {
  if (isDeadline(c, error)) return errorBody("deadline_exceeded", "the request ran past its deadline");
  if (isShutdown(c, error)) return errorBody(SHUTDOWN_ERROR.code, SHUTDOWN_ERROR.message);
  const known = asApiError(error);
  if (known) return errorBody(known.code, known.message, known.field);
  console.error(error);
  return errorBody("internal", "internal error");
}

export async function handleGenerate(
  c: Context,
  deps: TaskRouteDeps,
  body: GenerateRequest,
  span: Span,
  accept = c.req.header("accept"),
) {
  const reply = negotiate(accept, body.num_images);
  if (body.image !== undefined && !deps.engine.info.model.canEncodeImages) {
    throw new ApiError(400, "invalid_request", "image: this model has no VAE encoder for img2img", "image");
  }
  // img2img's image is decoded once admitted, like every uploaded image
  const { release, prepared: initImage } = await deps.admission.admit(() =>
    body.image === undefined
      ? Promise.resolve(undefined)
      : readImage(deps, "image", body.image, body.fit, body)
  );
  try {
    return await respond(c, deps, body, span, reply, initImage, release);
  } catch (error) {
    release();
    throw error;
  }
}

/** Runs an admitted request and replies; `release` frees its slot once its work is over. */
async function respond(
  c: Context,
  deps: TaskRouteDeps,
  body: GenerateRequest,
  span: Span,
  reply: Reply,
  initImage: RgbImage | undefined,
  release: () => void,
) {
  const seed = body.seed ?? randomSeed();
  const input = {
    prompt: body.prompt,
    negativePrompt: body.negative_prompt,
    width: body.width,
    height: body.height,
    steps: body.steps,
    guidanceScale: body.guidance_scale,
    seed,
    scheduler: body.scheduler,
    numImages: body.num_images,
    lora: adapterSpecs(body.lora),
    init: initImage && { image: initImage, strength: body.strength ?? 0.8 },
  };
  const { lora: _lora, image: _image, ...echoed } = body;
  const signal: AbortSignal = c.get("signal") ?? c.req.raw.signal;
  const format = reply === "json" || reply === "sse" ? body.output_format : reply;

  const run = async (onProgress?: (step: number, total: number) => void) => {
    const started = performance.now();
    const result = await deps.engine.call("generate", input, { signal, span, onProgress });
    const clock = new StageClock(result.timings);
    const encoded = await encodeImages(result.images, format, { span, clock });
    const timings = { ...clock.timings(), total_ms: Math.round((performance.now() - started) * 10) / 10 };
    return { encoded, timings, adapters: result.adapters };
  };
  const jsonBody = ({ encoded, timings, adapters }: Awaited<ReturnType<typeof run>>) => ({
    images: encoded.map((e) => ({
      data: e.bytes.toBase64(),
      seed: e.seed,
      format,
      width: e.width,
      height: e.height,
    })),
    parameters: {
      ...echoed,
      seed,
      ...(input.init ? { strength: input.init.strength } : {}),
      ...(adapters.length ? { lora: adapters } : {}),
      output_format: format,
    },
    timings,
  });

  if (reply === "sse") {
    // The stream opens once the work is under way (its first step), so that a request the engine
    // refuses (an adapter that cannot be had) still gets its status code.
    const steps: { step: number; total: number }[] = [];
    let wake = () => {};
    const outcome = run((step, total) => {
      steps.push({ step, total });
      wake();
    });
    const started = new Promise<void>((resolve) => wake = resolve);
    await Promise.race([started, outcome]);
    const done = workContinues(c); // the deadline holds until the stream ends
    return streamSSE(c, async (stream) => {
      stream.onAbort(() => clientLeft(c));
      try {
        const sendSteps = async () => {
          for (const progress of steps.splice(0)) {
            await stream.writeSSE({ event: "progress", data: JSON.stringify(progress) });
          }
        };
        let finished = false;
        const result = outcome.finally(() => finished = true);
        while (!finished) {
          const woken = new Promise<void>((resolve) => wake = resolve); // before sending: none is missed
          await sendSteps();
          await Promise.race([woken, result.catch(() => {})]);
        }
        await sendSteps();
        await stream.writeSSE({ event: "result", data: JSON.stringify(jsonBody(await result)) });
      } catch (error) {
        if (!isClientGone(c)) {
          await stream.writeSSE({ event: "error", data: JSON.stringify(streamError(c, error)) });
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
