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

export function openApiDocument(schemas: { generate: z.ZodType }) {
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
            "413": jsonError("The body is too large"),
            "429": jsonError("Too many requests in flight; see Retry-After"),
          },
        },
      },
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
