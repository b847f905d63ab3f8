/**
 * The HTTP API: middleware, error mapping, and the routes of the route table (table.ts) registered
 * in the app, the model tasks among them behind the draining guard and `Prefer: respond-async`.
 */
import { Hono, type MiddlewareHandler } from "hono";
import { ApiError, asApiError, errorBody, errorResponse } from "./errors.ts";
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
import { methodLabel, RouteMatcher } from "./methods.ts";
import { JobStore, respondAsync } from "./jobs.ts";
import type { AppEnv, Route } from "./route.ts";
import { routeTable } from "./table.ts";
import type { EngineClient } from "../engine/client.ts";
import type { Config } from "../config.ts";
import { startSpan } from "../telemetry.ts";
import { SpanStatusCode } from "@opentelemetry/api";
import { ServerMetrics } from "../server_metrics.ts";

export interface AppServices {
  engine: EngineClient;
  config: Config;
  /** True once the server has begun to shut down. */
  draining: () => boolean;
}

/** While draining, new work is refused (the listener still answers health checks). */
function refuseWhileDraining(draining: () => boolean): MiddlewareHandler {
  return async (_c, next) => {
    if (draining()) {
      throw new ApiError(
        503,
        "draining",
        "the server is shutting down; retry on another replica",
        undefined,
        { "Retry-After": "1" },
      );
    }
    await next();
  };
}

export function createApp(services: AppServices): {
  app: Hono<AppEnv>;
  routes: Route[];
  admission: Admission;
  requests: RequestWork;
  close: () => Promise<void>;
} {
  const { engine, config } = services;
  const admission = new Admission(config.limits.maxConcurrentRequests);
  const requests = new RequestWork();
  const app = new Hono<AppEnv>();

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
  const jobs = new JobStore(config.jobs);
  const routes = routeTable({
    engine,
    config,
    admission,
    jobs,
    draining: services.draining,
    prometheusText: () => metrics.prometheusText(),
  });
  const matcher = new RouteMatcher(routes);
  app.use("*", async (c, next) => {
    const started = performance.now();
    try {
      await next();
    } finally {
      // labels from fixed sets only: a client's method or path never becomes a series
      metrics.recordRequest(
        matcher.label(c.req.path),
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
  // the page asks for the key and sends it
  for (const route of routes.filter((r) => r.beforeApiKey)) app.on(route.method, route.path, route.handler);
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
  app.notFound((c) => matcher.notFound(c));

  // A model task is refused while draining, and with `Prefer: respond-async` runs as a job.
  const drainingGuard = refuseWhileDraining(services.draining);
  const asJob = respondAsync(jobs, admission, () => app);
  for (const route of routes.filter((r) => !r.beforeApiKey)) {
    if (route.task) {
      app.on(route.method, route.path, drainingGuard);
      app.on(route.method, route.path, asJob);
    }
    app.on(route.method, route.path, route.handler);
  }

  return { app, routes, admission, requests, close };
}
