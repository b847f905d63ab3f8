/** The HTTP API: routing, validation, error mapping. Work is delegated to pipeline tasks. */
import { Hono } from "hono";
import type { z } from "zod";
import { ApiError, asApiError, errorBody, errorResponse, fromZodError } from "./errors.ts";
import {
  apiKeys,
  corsFor,
  deadline,
  isClientGone,
  isDeadline,
  isShutdown,
  RequestWork,
  SHUTDOWN_ERROR,
} from "./access.ts";
import { Admission } from "./admission.ts";
import { readBody } from "./body.ts";
import { methodLabel, RouteTable } from "./methods.ts";
import {
  editRequestSchema,
  generateRequestSchema,
  interpolateRequestSchema,
  invertRequestSchema,
} from "./schemas.ts";
import { handleEdit, handleInterpolate, handleInvert, type TaskRouteDeps } from "./image_routes.ts";
import { handleGenerate } from "./generate.ts";
import { openAiRoutes } from "./openai.ts";
import { a1111Routes } from "./a1111.ts";
import type { GenerateNative } from "./compat.ts";
import { playground } from "./playground.ts";
import { jobRoutes, JobStore, respondAsync } from "./jobs.ts";
import { apiReferenceHtml, openApiDocument } from "./openapi.ts";
import type { EngineClient } from "../engine/client.ts";
import { runTooLarge } from "../pipeline/cost.ts";
import type { Config } from "../config.ts";
import { inSpan, type Span, startSpan } from "../telemetry.ts";
import { SpanStatusCode } from "@opentelemetry/api";
import { ServerMetrics } from "../server_metrics.ts";

/** The routes that run the model: refused while draining, and runnable as jobs. */
const TASK_PATHS = [
  "/generate",
  "/invert",
  "/edit",
  "/interpolate",
  "/v1/images/generations",
  "/v1/images/edits",
  "/sdapi/v1/txt2img",
  "/sdapi/v1/img2img",
];

type Env = { Variables: { span: Span; signal: AbortSignal; leave: () => void; continues: () => () => void } };

export interface AppServices {
  engine: EngineClient;
  config: Config;
  /** True once the server has begun to shut down. */
  draining: () => boolean;
}

async function readJson(c: { req: { json: () => Promise<unknown> } }): Promise<unknown> {
  try {
    return await c.req.json();
  } catch {
    throw new ApiError(400, "invalid_json", "the request body is not valid JSON");
  }
}

function validate<S extends z.ZodType>(schema: S, body: unknown, span: Span): Promise<z.infer<S>> {
  return inSpan("validate", span, () => {
    // the input in each issue tells a key the value lacks from a key of the wrong type (errors.ts)
    const parsed = schema.safeParse(body, { reportInput: true });
    if (!parsed.success) throw fromZodError(parsed.error);
    return parsed.data;
  });
}

export function createApp(
  services: AppServices,
): { app: Hono<Env>; admission: Admission; requests: RequestWork; close: () => Promise<void> } {
  const { engine, config } = services;
  const { model, memory } = engine.info;
  const admission = new Admission(config.limits.maxConcurrentRequests);
  const requests = new RequestWork();
  const native = { width: model.nativeWidth, height: model.nativeHeight };
  const limits = {
    ...config.limits,
    // a size left out is the model's native one
    runTooLarge: (width: number, height: number, unetRows: number, imageRows: number) =>
      runTooLarge(memory, width || native.width, height || native.height, unetRows, imageRows),
    memoryBudgetBytes: memory.budgetBytes,
  };
  const schemas = {
    generate: generateRequestSchema(limits, native),
    invert: invertRequestSchema(limits),
    edit: editRequestSchema(limits),
    interpolate: interpolateRequestSchema(limits),
  };
  const taskDeps: TaskRouteDeps = {
    engine,
    admission,
    imageLimits: { maxBytes: config.limits.maxImageBytes, maxPixels: config.limits.maxInputPixels },
    maxPixels: config.limits.maxPixels,
  };
  const app = new Hono<Env>();

  const metrics = new ServerMetrics(config.telemetry, {
    requestsInFlight: () => admission.active,
    queueDepth: () => engine.state.pendingCalls,
    adapters: () => engine.state.adapters,
  });
  const observe = (rows: number, seconds: number) => metrics.recordRun(rows, seconds);
  engine.runListeners.add(observe);
  /** Detaches the app from the engine (its run listener) and stops its metrics, for when the app is done. */
  const close = () => {
    engine.runListeners.delete(observe);
    return metrics.shutdown();
  };
  const routes = new RouteTable(app);
  app.use("*", async (c, next) => {
    const started = performance.now();
    try {
      await next();
    } finally {
      // labels from fixed sets only: a client's method or path never becomes a series
      metrics.recordRequest(
        routes.label(c.req.path),
        methodLabel(c.req.method),
        c.res.status,
        (performance.now() - started) / 1000,
      );
    }
  });
  app.use("*", async (c, next) => {
    const span = startSpan(`${c.req.method} ${c.req.path}`, undefined, {
      "http.request.method": c.req.method,
      "url.path": c.req.path,
    });
    c.set("span", span);
    try {
      await next();
    } finally {
      span.setAttribute("http.response.status_code", c.res.status);
      if (c.res.status >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
      span.end();
    }
  });
  app.get("/", playground); // before the API-key check: the page asks for the key and sends it
  app.use("*", corsFor(config.access.corsOrigins));
  app.use("*", apiKeys(config.access.apiKeys));
  app.use("*", deadline(config.access.requestTimeoutMs, requests));
  app.use("*", readBody(config.limits.maxBodyBytes, config.access.bodyReadTimeoutMs));

  app.onError((error, c) => {
    const known = asApiError(error);
    if (known) return errorResponse(c, known);
    if (isDeadline(c, error)) {
      return c.json(
        errorBody(
          "deadline_exceeded",
          `the request ran past its ${config.access.requestTimeoutMs} ms deadline`,
        ),
        504,
      );
    }
    if (isShutdown(c, error)) {
      c.header("Retry-After", "1");
      return c.json(errorBody(SHUTDOWN_ERROR.code, SHUTDOWN_ERROR.message), 503);
    }
    if (isClientGone(c)) {
      return c.json(errorBody("client_closed", "the client went away"), 499 as 400);
    }
    console.error(error);
    return c.json(errorBody("internal", "internal error"), 500);
  });
  app.notFound((c) => routes.notFound(c));

  // While draining, new work is refused (the listener still answers health checks); with
  // `Prefer: respond-async` a task runs as a job.
  const jobs = new JobStore(config.jobs);
  for (const path of TASK_PATHS) {
    app.use(path, async (_c, next) => {
      if (services.draining()) {
        throw new ApiError(
          503,
          "draining",
          "the server is shutting down; retry on another replica",
          undefined,
          { "Retry-After": "1" },
        );
      }
      await next();
    });
    app.use(path, respondAsync(jobs, admission, () => app));
  }
  jobRoutes(app, jobs);

  app.post("/generate", async (c) => {
    const body = await validate(schemas.generate, await readJson(c), c.var.span);
    return handleGenerate(c, taskDeps, body, c.var.span);
  });

  // The OpenAI and AUTOMATIC1111 APIs: requests translated into /generate's, run by the same code.
  const generateNative: GenerateNative = async (c, native) => {
    const body = await validate(schemas.generate, native, c.var.span);
    return handleGenerate(c, taskDeps, body, c.var.span, "application/json");
  };
  openAiRoutes(app, engine.info.name, generateNative);
  a1111Routes(app, {
    model: engine.info.name,
    cachedAdapters: () => engine.call("cachedAdapters", undefined),
    generate: generateNative,
  });

  app.post("/invert", async (c) => {
    const body = await validate(schemas.invert, await readJson(c), c.var.span);
    return handleInvert(c, taskDeps, body, c.var.span);
  });
  app.post("/edit", async (c) => {
    const body = await validate(schemas.edit, await readJson(c), c.var.span);
    return handleEdit(c, taskDeps, body, c.var.span);
  });
  app.post("/interpolate", async (c) => {
    const body = await validate(schemas.interpolate, await readJson(c), c.var.span);
    return handleInterpolate(c, taskDeps, body, c.var.span);
  });

  // Ready: not draining, and the engine is running (false while its worker restarts).
  const health = (c: any) => {
    const draining = services.draining(), ready = !draining && engine.ready;
    return c.json(
      {
        status: ready ? "ok" : draining ? "draining" : "engine_starting",
        live: true,
        ready,
        in_flight: admission.active,
        engine_restarts: engine.restarts,
      },
      ready ? 200 : 503,
    );
  };
  app.get("/health", health);
  app.get("/health/ready", health);
  app.get("/health/live", (c) => c.json({ status: "ok", live: true }));

  app.get("/v1/models", (c) =>
    c.json({
      data: [{
        id: engine.info.name,
        object: "model",
        native_width: model.nativeWidth,
        native_height: model.nativeHeight,
        latent_channels: model.latentChannels,
        precision: model.precision,
        memory: {
          budget_bytes: memory.budgetBytes,
          enforced: memory.costs !== undefined,
          run_cost: memory.costs,
        },
        execution_provider: engine.info.provider.provider,
        execution_provider_choice: config.executionProvider,
        execution_providers_skipped: engine.info.provider.skipped,
        capabilities: {
          generate: true,
          invert: model.canEncodeImages,
          edit: model.canEncodeImages,
          interpolate: true,
          image_input: model.canEncodeImages,
          per_row_timestep: model.perRowTimestep,
          schedulers: ["ddim", "euler"],
        },
        lora_targets: engine.info.loraTargets,
        adapters: engine.state.loadedAdapters,
      }],
    }));

  app.get(
    "/metrics",
    async (c) => c.text(await metrics.prometheusText(), 200, { "Content-Type": "text/plain; version=0.0.4" }),
  );

  const openapi = openApiDocument(schemas);
  app.get("/openapi.json", (c) => c.json(openapi));
  app.get("/docs", (c) => c.html(apiReferenceHtml(openapi)));

  return { app, admission, requests, close };
}
