/**
 * Asynchronous jobs (RFC 7240's `Prefer: respond-async`, as Cog does it): any task route answers
 * 202 with a `Location` of the job at once and runs the very same request in the background, through
 * the same app (validation, admission, handlers), so the job's result is byte for byte the reply the
 * synchronous call would have had. `GET /v1/jobs/{id}` answers 202 with the status and progress while
 * it runs, then that reply itself; `DELETE` cancels a running job or forgets a finished one.
 * Finished jobs are kept for a bounded time and count.
 */
import type { Context, Hono, MiddlewareHandler } from "hono";
import { ApiError, errorBody } from "./errors.ts";
import type { Admission } from "./admission.ts";
import type { Route } from "./route.ts";
import { jsonError, jsonOk } from "./openapi.ts";

type Status = "running" | "succeeded" | "failed" | "cancelled";

interface Job {
  id: string;
  route: string;
  status: Status;
  progress?: { step: number; total: number };
  created: number;
  finished?: number;
  controller: AbortController;
  reply?: { status: number; headers: [string, string][]; body: Uint8Array };
}

export interface JobLimits {
  /** How long a finished job's reply is kept. */
  ttlMs: number;
  /** How many finished jobs are kept (the oldest go first). */
  maxFinished: number;
}

/** Progress reporters of the requests that jobs run, by request. */
const reporters = new WeakMap<Request, (step: number, total: number) => void>();

/** The progress callback of a job's request, if this request is one (for handlers that report steps). */
export function jobProgress(c: Context): ((step: number, total: number) => void) | undefined {
  return reporters.get(c.req.raw);
}

/**
 * Adds a listener to a request's progress beside a job's own (a route that tracks the progress of
 * its requests itself: the AUTOMATIC1111 routes' /sdapi/v1/progress).
 */
export function listenProgress(request: Request, listener: (step: number, total: number) => void): void {
  const job = reporters.get(request);
  reporters.set(request, job ? (step, total) => (job(step, total), listener(step, total)) : listener);
}

export class JobStore {
  readonly #jobs = new Map<string, Job>();

  constructor(readonly limits: JobLimits) {}

  get(id: string): Job | undefined {
    this.#prune();
    return this.#jobs.get(id);
  }

  add(job: Job): void {
    this.#jobs.set(job.id, job);
  }

  delete(id: string): void {
    this.#jobs.delete(id);
  }

  #prune(): void {
    const now = Date.now();
    const finished = [...this.#jobs.values()].filter((j) => j.finished !== undefined)
      .sort((a, b) => a.finished! - b.finished!);
    const excess = finished.length - this.limits.maxFinished;
    finished.forEach((job, i) => {
      if (i < excess || now - job.finished! > this.limits.ttlMs) this.#jobs.delete(job.id);
    });
  }

  finish(job: Job, status: Status, reply?: Job["reply"]): void {
    job.status = status;
    job.reply = reply;
    job.finished = Date.now();
    this.#prune();
  }
}

const wantsAsync = (c: Context) =>
  (c.req.header("prefer") ?? "").split(/[,;]/).some((p) => p.trim().toLowerCase() === "respond-async");

function statusBody(job: Job) {
  return {
    id: job.id,
    route: job.route,
    status: job.status,
    ...(job.progress ? { progress: job.progress } : {}),
    created_at: new Date(job.created).toISOString(),
    ...(job.finished ? { finished_at: new Date(job.finished).toISOString() } : {}),
  };
}

/**
 * Middleware for the task routes: with `Prefer: respond-async`, admits the job by the same limit
 * as every request (429 when full), then replays the request through `app` without the header.
 */
export function respondAsync(
  jobs: JobStore,
  admission: Admission,
  app: () => Hono<any>,
): MiddlewareHandler {
  return async (c, next) => {
    if (!wantsAsync(c)) return await next();
    admission.acquire()(); // a full server refuses the job now, as it would the request
    const id = crypto.randomUUID();
    const controller = new AbortController();
    const headers = new Headers(c.req.raw.headers);
    headers.delete("prefer");
    // The job's reply is kept whole: JSON in place of a stream, raw image types as asked.
    if ((headers.get("accept") ?? "").includes("text/event-stream")) {
      headers.set("accept", "application/json");
    }
    const request = new Request(c.req.url, {
      method: c.req.method,
      headers,
      body: await c.req.arrayBuffer(),
      signal: controller.signal,
    });
    const job: Job = { id, route: c.req.path, status: "running", created: Date.now(), controller };
    jobs.add(job);
    reporters.set(request, (step, total) => job.progress = { step, total });
    (async () => {
      try {
        const response = await app().fetch(request);
        const body = new Uint8Array(await response.arrayBuffer());
        if (job.status === "cancelled") return;
        jobs.finish(job, response.ok ? "succeeded" : "failed", {
          status: response.status,
          headers: [...response.headers],
          body,
        });
      } catch (error) {
        if (job.status !== "cancelled") {
          console.error(error);
          const body = new TextEncoder().encode(JSON.stringify(errorBody("internal", "internal error")));
          jobs.finish(job, "failed", { status: 500, headers: [["content-type", "application/json"]], body });
        }
      }
    })();
    c.header("Location", `/v1/jobs/${id}`);
    return c.json(statusBody(job), 202);
  };
}

/** GET and DELETE /v1/jobs/:id, for the route table. */
export function jobRoutes(jobs: JobStore): Route[] {
  const find = (c: Context) => {
    const job = jobs.get(c.req.param("id")!);
    if (!job) {
      throw new ApiError(404, "not_found", "no such job (finished jobs are kept for a while only)", "id");
    }
    return job;
  };
  const unknown = jsonError("No such job, or a finished one no longer kept");
  return [{
    method: "GET",
    path: "/v1/jobs/:id",
    task: false,
    handler: (c) => {
      const job = find(c);
      if (!job.reply) {
        c.header("Retry-After", "1");
        return c.json(statusBody(job), job.status === "running" ? 202 : 200);
      }
      const headers = new Headers(job.reply.headers);
      headers.set("X-Job-Id", job.id);
      headers.set("X-Job-Status", job.status);
      return new Response(job.reply.body as Uint8Array<ArrayBuffer>, { status: job.reply.status, headers });
    },
    doc: {
      summary: "A job of a task route run with `Prefer: respond-async`",
      description:
        "While it runs, its status and progress; once finished, the reply the request would have had " +
        "(its status, headers and body), with X-Job-Id and X-Job-Status.",
      responses: {
        "200": jsonOk("The job's reply (or the status of a cancelled job)"),
        "202": jsonOk("{id, route, status, progress?, created_at} while it runs; see Retry-After"),
        "404": unknown,
      },
    },
  }, {
    method: "DELETE",
    path: "/v1/jobs/:id",
    task: false,
    handler: (c) => {
      const job = find(c);
      if (job.finished === undefined) {
        job.controller.abort(new DOMException("the job was cancelled", "AbortError"));
        jobs.finish(job, "cancelled");
        return c.json(statusBody(job), 200);
      }
      jobs.delete(job.id);
      return c.body(null, 204);
    },
    doc: {
      summary: "Cancel a running job, or forget a finished one",
      responses: {
        "200": jsonOk("The cancelled job's status"),
        "204": { description: "The finished job is forgotten" },
        "404": unknown,
      },
    },
  }];
}
