/**
 * The route table: every route of the API, in one list. app.ts registers each route from it and
 * puts the draining guard and `Prefer: respond-async` jobs on exactly its model tasks; methods.ts
 * answers 405 and labels metrics from it; openapi.ts documents its own API's routes from it. A route
 * added here is served, guarded and documented.
 */
import { jsonRoute, type Route, validate } from "./route.ts";
import type { Admission } from "./admission.ts";
import {
  editRequestSchema,
  generateRequestSchema,
  generateResponseSchema,
  interpolateRequestSchema,
  invertRequestSchema,
} from "./schemas.ts";
import { handleEdit, handleInterpolate, handleInvert, type TaskRouteDeps } from "./image_routes.ts";
import { handleGenerate } from "./generate.ts";
import { openAiRoutes } from "./openai.ts";
import { a1111Routes } from "./a1111.ts";
import type { GenerateNative } from "./compat.ts";
import { jobRoutes, type JobStore } from "./jobs.ts";
import { apiReferenceHtml, imageTaskDoc, jsonError, jsonOk, openApiDocument } from "./openapi.ts";
import { health, liveness, models } from "./status.ts";
import { playground } from "./playground.ts";
import type { EngineClient } from "../engine/client.ts";
import { runTooLarge } from "../pipeline/cost.ts";
import type { Config } from "../config.ts";

export interface TableDeps {
  engine: EngineClient;
  config: Config;
  admission: Admission;
  jobs: JobStore;
  /** True once the server has begun to shut down. */
  draining: () => boolean;
  prometheusText: () => Promise<string>;
}

export function routeTable(deps: TableDeps): Route[] {
  const { engine, config, admission } = deps;
  const { model, memory } = engine.info;
  const native = { width: model.nativeWidth, height: model.nativeHeight };
  const limits = {
    ...config.limits,
    // a size left out is the model's native one
    runTooLarge: (width: number, height: number, unetRows: number, imageRows: number) =>
      runTooLarge(memory, width || native.width, height || native.height, unetRows, imageRows),
    memoryBudgetBytes: memory.budgetBytes,
  };
  const taskDeps: TaskRouteDeps = {
    engine,
    admission,
    imageLimits: { maxBytes: config.limits.maxImageBytes, maxPixels: config.limits.maxInputPixels },
    maxPixels: config.limits.maxPixels,
  };
  const generateSchema = generateRequestSchema(limits, native);
  // The OpenAI and AUTOMATIC1111 APIs: requests translated into /generate's, run by the same code.
  const generateNative: GenerateNative = async (c, native) => {
    const body = await validate(generateSchema, native, c.var.span);
    return handleGenerate(c, taskDeps, body, c.var.span, "application/json");
  };
  const readiness = health(engine, admission, deps.draining);
  const readinessDoc = { "200": jsonOk("ready"), "503": jsonOk("draining, or the engine is starting") };

  const routes: Route[] = [
    { method: "GET", path: "/", task: false, handler: playground, beforeApiKey: true },
    jsonRoute({
      method: "POST",
      path: "/generate",
      task: true,
      request: generateSchema,
      handle: (c, body) => handleGenerate(c, taskDeps, body, c.var.span),
      doc: {
        summary: "Generate images from a prompt",
        description:
          "Reply by Accept: application/json (default), image/png|webp|jpeg (one image, raw bytes), " +
          "or text/event-stream (`progress` events with {step, total}, then one `result` event).",
        responses: {
          "200": {
            description: "Images with their seeds, the parameters used and per-stage timings",
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
    }),
    jsonRoute({
      method: "POST",
      path: "/invert",
      task: true,
      request: invertRequestSchema(limits),
      handle: (c, body) => handleInvert(c, taskDeps, body, c.var.span),
      doc: imageTaskDoc(
        "Invert an image to its x_T",
        "DDIM inversion (or fixed-point refined inversion) conditioned on the prompt, then a reconstruction from x_T.",
        "{latent: {shape, dtype, data}, reconstruction, metrics: {psnr, ssim, upper_bound, vs_vae_reconstruction}, parameters, timings}",
      ),
    }),
    jsonRoute({
      method: "POST",
      path: "/edit",
      task: true,
      request: editRequestSchema(limits),
      handle: (c, body) => handleEdit(c, taskDeps, body, c.var.span),
      doc: imageTaskDoc(
        "Edit an image by switching prompts (paper Eq. 15)",
        "From the inverted x_T (or a latent from /invert): the source prompt for the first (1 - ratio) N steps, then the target prompt.",
        "{images: [image], reconstruction?, latent, parameters, timings}",
      ),
    }),
    jsonRoute({
      method: "POST",
      path: "/interpolate",
      task: true,
      request: interpolateRequestSchema(limits),
      handle: (c, body) => handleInterpolate(c, taskDeps, body, c.var.span),
      doc: imageTaskDoc(
        "Interpolate between two endpoints",
        "slerp of x_T and lerp of the text embeddings over `frames` frames; distances are pixel L2 between adjacent frames (pixels in [0, 1]), istd their standard deviation.",
        "{frames: [image], distances, istd, pixel_range, animation?, parameters, timings}",
      ),
    }),
    ...openAiRoutes(engine.info.name, generateNative),
    ...a1111Routes({
      model: engine.info.name,
      cachedAdapters: () => engine.call("cachedAdapters", undefined),
      generate: generateNative,
    }),
    ...jobRoutes(deps.jobs),
    {
      method: "GET",
      path: "/health",
      task: false,
      handler: readiness,
      doc: { summary: "Liveness and readiness", responses: readinessDoc },
    },
    {
      method: "GET",
      path: "/health/live",
      task: false,
      handler: liveness,
      doc: { summary: "Liveness", responses: { "200": jsonOk("alive") } },
    },
    {
      method: "GET",
      path: "/health/ready",
      task: false,
      handler: readiness,
      doc: { summary: "Readiness", responses: readinessDoc },
    },
    {
      method: "GET",
      path: "/v1/models",
      task: false,
      handler: models(engine, config),
      doc: {
        summary: "The served model, its native size, capabilities and loaded adapters",
        responses: { "200": jsonOk("models") },
      },
    },
    {
      method: "GET",
      path: "/metrics",
      task: false,
      handler: async (c) =>
        c.text(await deps.prometheusText(), 200, { "Content-Type": "text/plain; version=0.0.4" }),
      doc: {
        summary: "Metrics in the Prometheus text format",
        responses: {
          "200": {
            description: "Prometheus text 0.0.4",
            content: { "text/plain": { schema: { type: "string" } } },
          },
        },
      },
    },
    {
      method: "GET",
      path: "/openapi.json",
      task: false,
      handler: (c) => c.json(openapi),
      doc: { summary: "This document", responses: { "200": jsonOk("OpenAPI 3.1") } },
    },
    {
      method: "GET",
      path: "/docs",
      task: false,
      handler: (c) => c.html(reference),
      doc: { summary: "API reference page", responses: { "200": { description: "HTML" } } },
    },
  ];
  // made once, from the finished table (the two handlers above run only later)
  const openapi = openApiDocument(routes);
  const reference = apiReferenceHtml(openapi);
  return routes;
}
