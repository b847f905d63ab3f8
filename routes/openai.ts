/**
 * The OpenAI Images API (`POST /v1/images/generations`, `POST /v1/images/edits`) as the official
 * SDKs speak it: each request is translated into this server's own /generate request (text-to-image,
 * or img2img for an edit), validated and run by the same code, and its reply and errors translated
 * back into OpenAI's shapes. Fields this server cannot honour are accepted at their "off" values and
 * refused with a 400 naming them otherwise; this server's own fields (seed, steps, guidance_scale,
 * negative_prompt, scheduler, lora, strength) ride along as extensions.
 */
import type { Context } from "hono";
import { ApiError } from "./errors.ts";
import { type GenerateNative, type OffRule, refuseUnlessOff, translateErrors } from "./compat.ts";
import type { Route } from "./route.ts";

const EXTENSIONS = ["seed", "steps", "guidance_scale", "negative_prompt", "scheduler", "lora"] as const;
/** OpenAI fields, each with the values that mean "nothing asked of the server" (null always does). */
const OFF_VALUES: Record<string, OffRule> = {
  quality: ["auto", "standard"],
  style: [],
  background: ["auto", "opaque"],
  moderation: ["auto", "low"],
  stream: [false],
  partial_images: [0],
  output_compression: [100],
  input_fidelity: ["low"],
  user: ["*"],
  safety_identifier: ["*"],
};

/** The native fields that an OpenAI request names otherwise. */
const NATIVE_TO_OPENAI: Record<string, string> = { width: "size", height: "size", num_images: "n" };

function openAiError(status: number, message: string, param: string | null, code: string | null) {
  return { error: { message, type: status >= 500 ? "server_error" : "invalid_request_error", param, code } };
}

function parseSize(size: unknown): { width?: number; height?: number } {
  if (size === undefined || size === null || size === "auto") return {};
  const match = typeof size === "string" ? /^(\d{1,5})x(\d{1,5})$/.exec(size) : null;
  if (!match) {
    throw new ApiError(
      400,
      "invalid_request",
      `size: must be WIDTHxHEIGHT or auto, got ${JSON.stringify(size)}`,
      "size",
    );
  }
  return { width: Number(match[1]), height: Number(match[2]) };
}

/** The native /generate body for an OpenAI request body; refuses what this server cannot do. */
function translate(body: Record<string, unknown>, modelId: string): Record<string, unknown> {
  const known = new Set([
    "prompt",
    "n",
    "size",
    "response_format",
    "output_format",
    "model",
    "image",
    "mask",
    "strength",
    ...EXTENSIONS,
    ...Object.keys(OFF_VALUES),
  ]);
  for (const key of Object.keys(body)) {
    if (!known.has(key)) {
      throw new ApiError(400, "unknown_parameter", `${key}: not a parameter of this API`, key);
    }
  }
  refuseUnlessOff(body, OFF_VALUES);
  if (body.model !== undefined && body.model !== null && body.model !== modelId) {
    throw new ApiError(
      404,
      "model_not_found",
      `model: this server serves ${modelId}, not ${body.model}`,
      "model",
    );
  }
  if (
    body.response_format !== undefined && body.response_format !== null && body.response_format !== "b64_json"
  ) {
    throw new ApiError(
      400,
      "unsupported_value",
      "response_format: only b64_json (this server keeps no files to link to)",
      "response_format",
    );
  }
  if (body.mask !== undefined) {
    throw new ApiError(400, "unsupported_value", "mask: inpainting is not supported", "mask");
  }
  const native: Record<string, unknown> = { prompt: body.prompt, ...parseSize(body.size) };
  if (body.n !== undefined && body.n !== null) native.num_images = body.n;
  if (body.output_format !== undefined && body.output_format !== null) {
    native.output_format = body.output_format;
  }
  for (const key of [...EXTENSIONS, "image", "strength"]) {
    if (body[key] !== undefined) native[key] = body[key];
  }
  return native;
}

/** Multipart fields as the SDK sends them: numbers and JSON as text, the image as a file. */
async function editBody(c: Context): Promise<Record<string, unknown>> {
  const form = await c.req.parseBody({ all: true }).catch(() => {
    throw new ApiError(400, "invalid_request", "body: expected multipart/form-data", "body");
  });
  const body: Record<string, unknown> = {};
  for (const [rawKey, value] of Object.entries(form)) {
    const key = rawKey.replace(/\[\]$/, "");
    const values = Array.isArray(value) ? value : [value];
    if (key === "image") {
      if (values.length !== 1 || !(values[0] instanceof File)) {
        throw new ApiError(400, "invalid_request", "image: exactly one image file", "image");
      }
      body.image = (new Uint8Array(await (values[0] as File).arrayBuffer())).toBase64();
    } else if (key === "mask") {
      body.mask = true;
    } else {
      const text = String(values[0]);
      body[key] = ["n", "seed", "steps", "guidance_scale", "strength", "partial_images", "output_compression"]
          .includes(key) && text.trim() !== "" && !Number.isNaN(Number(text))
        ? Number(text)
        : key === "lora" || key === "stream"
        ? (() => {
          try {
            return JSON.parse(text);
          } catch {
            return text;
          }
        })()
        : text;
    }
  }
  return body;
}

function respond(c: Context, run: () => Promise<Response>) {
  return translateErrors(c, async () => {
    const native = await (await run()).json();
    return c.json({
      created: Math.floor(Date.now() / 1000),
      data: native.images.map((image: { data: string; seed: number }) => ({
        b64_json: image.data,
        seed: image.seed,
      })),
      output_format: native.parameters.output_format,
      size: `${native.images[0].width}x${native.images[0].height}`,
    });
  }, (error) => {
    // own keys only: a client's field "constructor" is not Object.prototype's
    const param = error.field === undefined
      ? null
      : Object.hasOwn(NATIVE_TO_OPENAI, error.field)
      ? NATIVE_TO_OPENAI[error.field]
      : error.field;
    return openAiError(error.status, error.message, param, error.code);
  });
}

/** POST /v1/images/generations and /v1/images/edits, for the route table: model tasks both. */
export function openAiRoutes(modelId: string, generate: GenerateNative): Route[] {
  return [{
    method: "POST",
    path: "/v1/images/generations",
    task: true,
    handler: (c) =>
      respond(c, async () => {
        const body = await c.req.json().catch(() => {
          throw new ApiError(400, "invalid_json", "body: not valid JSON", "body");
        });
        return generate(c, translate(body ?? {}, modelId));
      }),
  }, {
    method: "POST",
    path: "/v1/images/edits",
    task: true,
    handler: (c) =>
      respond(c, async () => {
        const body = await editBody(c);
        if (body.image === undefined) throw new ApiError(400, "invalid_request", "image: required", "image");
        return generate(c, translate(body, modelId));
      }),
  }];
}
