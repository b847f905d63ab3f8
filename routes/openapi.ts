/** /openapi.json, generated from the same zod schemas that validate requests, and /docs from it. */
import { z } from "zod";
import { errorSchema, generateResponseSchema } from "./schemas.ts";

const errorRef = { $ref: "#/components/schemas/Error" };
const jsonError = (description: string) => ({
  description,
  content: { "application/json": { schema: errorRef } },
});
const jsonOk = (description: string, schema?: z.ZodType) => ({
  description,
  content: { "application/json": { schema: schema ? z.toJSONSchema(schema) : { type: "object" } } },
});

const ADAPTER_ERRORS = {
  "403": jsonError("The adapter is outside the allowlist, or the hub refused the server's token"),
  "404": jsonError("Unknown adapter repo, revision or file (or not cached, offline)"),
  "422": jsonError("The adapter file is corrupt or fits no module of the loaded model"),
  "502": jsonError("The hub failed"),
  "504": jsonError("The hub timed out"),
};
const IMAGE_ERRORS = {
  "400": jsonError("Malformed JSON, a wrong type or value, or an undecodable image; `field` names it"),
  "408": jsonError("The body did not arrive within BODY_READ_TIMEOUT_MS"),
  "413": jsonError("The body or the image is too large"),
  "415": jsonError("The image is not PNG, JPEG or WebP"),
  "429": jsonError("Too many requests in flight; see Retry-After"),
};

function taskPath(summary: string, description: string, schema: z.ZodType, reply: string) {
  return {
    post: {
      summary,
      description,
      requestBody: {
        required: true,
        content: { "application/json": { schema: z.toJSONSchema(schema, { io: "input" }) } },
      },
      responses: { "200": jsonOk(reply), ...IMAGE_ERRORS, ...ADAPTER_ERRORS },
    },
  };
}

export function openApiDocument(
  schemas: { generate: z.ZodType; invert: z.ZodType; edit: z.ZodType; interpolate: z.ZodType },
) {
  return {
    openapi: "3.1.0",
    info: {
      title: "Smooth Diffusion server",
      version: "0.1.0",
      description:
        "Text-to-image with Smooth-LoRA adapters over ONNX Runtime, with per-timestep continuous batching.",
    },
    paths: {
      "/generate": {
        post: {
          summary: "Generate images from a prompt",
          description:
            "Reply by Accept: application/json (default), image/png|webp|jpeg (one image, raw bytes), " +
            "or text/event-stream (`progress` events with {step, total}, then one `result` event).",
          requestBody: {
            required: true,
            content: { "application/json": { schema: z.toJSONSchema(schemas.generate, { io: "input" }) } },
          },
          responses: {
            "200": {
              ...jsonOk(
                "Images with their seeds, the parameters used and per-stage timings",
                generateResponseSchema,
              ),
              content: {
                ...jsonOk("", generateResponseSchema).content,
                "image/png": { schema: { type: "string", format: "binary" } },
                "text/event-stream": { schema: { type: "string" } },
              },
            },
            "400": jsonError("Malformed JSON, a wrong type or an out-of-range value; `field` names it"),
            "406": jsonError("A raw image was asked for more than one image"),
            "408": jsonError("The body did not arrive within BODY_READ_TIMEOUT_MS"),
            "413": jsonError("The body is too large"),
            "429": jsonError("Too many requests in flight; see Retry-After"),
          },
        },
      },
      "/invert": taskPath(
        "Invert an image to its x_T",
        "DDIM inversion (or fixed-point refined inversion) conditioned on the prompt, then a reconstruction from x_T.",
        schemas.invert,
        "{latent: {shape, dtype, data}, reconstruction, metrics: {psnr, ssim, upper_bound, vs_vae_reconstruction}, parameters, timings}",
      ),
      "/edit": taskPath(
        "Edit an image by switching prompts (paper Eq. 15)",
        "From the inverted x_T (or a latent from /invert): the source prompt for the first (1 - ratio) N steps, then the target prompt.",
        schemas.edit,
        "{images: [image], reconstruction?, latent, parameters, timings}",
      ),
      "/interpolate": taskPath(
        "Interpolate between two endpoints",
        "slerp of x_T and lerp of the text embeddings over `frames` frames; distances are pixel L2 between adjacent frames (pixels in [0, 1]), istd their standard deviation.",
        schemas.interpolate,
        "{frames: [image], distances, istd, pixel_range, animation?, parameters, timings}",
      ),
      "/health": {
        get: {
          summary: "Liveness and readiness",
          responses: { "200": jsonOk("ready"), "503": jsonOk("draining") },
        },
      },
      "/health/live": { get: { summary: "Liveness", responses: { "200": jsonOk("alive") } } },
      "/health/ready": {
        get: { summary: "Readiness", responses: { "200": jsonOk("ready"), "503": jsonOk("draining") } },
      },
      "/v1/models": {
        get: {
          summary: "The served model, its native size, capabilities and loaded adapters",
          responses: { "200": jsonOk("models") },
        },
      },
      "/openapi.json": { get: { summary: "This document", responses: { "200": jsonOk("OpenAPI 3.1") } } },
      "/docs": { get: { summary: "API reference page", responses: { "200": { description: "HTML" } } } },
    },
    components: { schemas: { Error: z.toJSONSchema(errorSchema) } },
  };
}

const escapeHtml = (text: unknown) => String(text).replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);

function propertyRows(schema: any): string {
  const required = new Set<string>(schema?.required ?? []);
  return Object.entries<any>(schema?.properties ?? {}).map(([name, prop]) => {
    const type = prop.enum ? prop.enum.map((v: unknown) => JSON.stringify(v)).join(" | ") : prop.type ?? "";
    const range = [
      prop.minimum !== undefined ? `min ${prop.minimum}` : "",
      prop.maximum !== undefined ? `max ${prop.maximum}` : "",
    ]
      .filter(Boolean).join(", ");
    return `<tr><td><code>${escapeHtml(name)}</code>${required.has(name) ? " *" : ""}</td><td>${
      escapeHtml(type)
    }</td>` +
      `<td>${escapeHtml(prop.default ?? "")}</td><td>${escapeHtml(range)}</td><td>${
        escapeHtml(prop.description ?? "")
      }</td></tr>`;
  }).join("\n");
}

/** A self-contained reference page (no external scripts: it works offline). */
export function apiReferenceHtml(doc: ReturnType<typeof openApiDocument>): string {
  const sections = Object.entries<any>(doc.paths).flatMap(([path, methods]) =>
    Object.entries<any>(methods).map(([method, op]) => {
      const body = op.requestBody?.content?.["application/json"]?.schema;
      const table = body
        ? `<table><tr><th>field</th><th>type</th><th>default</th><th>range</th><th>about</th></tr>${
          propertyRows(body)
        }</table>`
        : "";
      const statuses = Object.entries<any>(op.responses).map(([code, r]) =>
        `<li><b>${code}</b> ${escapeHtml(r.description)}</li>`
      ).join("");
      return `<section><h2><code>${method.toUpperCase()} ${escapeHtml(path)}</code></h2><p>${
        escapeHtml(op.summary)
      }</p>` +
        `${
          op.description ? `<p>${escapeHtml(op.description)}</p>` : ""
        }${table}<ul>${statuses}</ul></section>`;
    })
  ).join("\n");
  return `<!doctype html><html><head><meta charset="utf-8"><title>${escapeHtml(doc.info.title)} API</title>
<style>body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:left;vertical-align:top}</style></head>
<body><h1>${escapeHtml(doc.info.title)}</h1><p>${escapeHtml(doc.info.description)}</p>
<p>Errors share one shape: <code>{"error": {"code", "message", "field"}}</code>. Machine-readable: <a href="/openapi.json">/openapi.json</a>.</p>
${sections}</body></html>`;
}
