/**
 * /openapi.json, generated from the route table (table.ts): each documented route with its request
 * schema, the zod schema that validates it; and /docs, a page made from the document.
 */
import { z } from "zod";
import { errorSchema } from "./schemas.ts";
import type { ResponseDoc, Route, RouteDoc } from "./route.ts";

const errorRef = { $ref: "#/components/schemas/Error" };
export const jsonError = (description: string): ResponseDoc => ({
  description,
  content: { "application/json": { schema: errorRef } },
});
export const jsonOk = (description: string, schema?: z.ZodType): ResponseDoc => ({
  description,
  content: { "application/json": { schema: schema ? z.toJSONSchema(schema) : { type: "object" } } },
});

export const ADAPTER_ERRORS = {
  "403": jsonError("The adapter is outside the allowlist, or the hub refused the server's token"),
  "404": jsonError("Unknown adapter repo, revision or file (or not cached, offline)"),
  "422": jsonError("The adapter file is corrupt or fits no module of the loaded model"),
  "502": jsonError("The hub failed"),
  "504": jsonError("The hub timed out"),
};
export const IMAGE_ERRORS = {
  "400": jsonError("Malformed JSON, a wrong type or value, or an undecodable image; `field` names it"),
  "408": jsonError("The body did not arrive within BODY_READ_TIMEOUT_MS"),
  "413": jsonError("The body or the image is too large"),
  "415": jsonError("The image is not PNG, JPEG or WebP"),
  "429": jsonError("Too many requests in flight; see Retry-After"),
};

/** What every model task may also answer (Route.task). */
const TASK_RESPONSES = {
  "202": jsonOk("With `Prefer: respond-async`: the job, at once; `Location` is its /v1/jobs/{id}"),
  "503": jsonError("The server is draining or its engine is restarting; see Retry-After"),
};

/** The operation of an image task route: its reply and the errors of images and adapters. */
export function imageTaskDoc(summary: string, description: string, reply: string): RouteDoc {
  return { summary, description, responses: { "200": jsonOk(reply), ...IMAGE_ERRORS, ...ADAPTER_ERRORS } };
}

function operation(route: Route, doc: RouteDoc) {
  const parameters = [...route.path.matchAll(/:(\w+)/g)].map(([, name]) => ({
    name,
    in: "path",
    required: true,
    schema: { type: "string" },
  }));
  return {
    summary: doc.summary,
    ...(doc.description ? { description: doc.description } : {}),
    ...(parameters.length ? { parameters } : {}),
    ...(route.request
      ? {
        requestBody: {
          required: true,
          content: { "application/json": { schema: z.toJSONSchema(route.request, { io: "input" }) } },
        },
      }
      : {}),
    responses: { ...doc.responses, ...(route.task ? TASK_RESPONSES : {}) },
  };
}

/** `/v1/jobs/:id` as OpenAPI writes it: `/v1/jobs/{id}`. */
export function openApiPath(path: string): string {
  return path.replace(/:(\w+)/g, "{$1}");
}

export function openApiDocument(routes: Route[]) {
  const paths: Record<string, Record<string, ReturnType<typeof operation>>> = {};
  for (const route of routes) {
    if (!route.doc) continue;
    const path = openApiPath(route.path);
    paths[path] = { ...paths[path], [route.method.toLowerCase()]: operation(route, route.doc) };
  }
  return {
    openapi: "3.1.0",
    info: {
      title: "Smooth Diffusion server",
      version: "0.1.0",
      description:
        "Text-to-image with Smooth-LoRA adapters over ONNX Runtime, with per-timestep continuous batching.",
    },
    paths,
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
