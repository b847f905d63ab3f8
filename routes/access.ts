/** Who may call, from where, and for how long: API keys, CORS, and a per-request deadline. */
import type { Context, MiddlewareHandler } from "hono";
import { cors } from "hono/cors";
import { timingSafeEqual } from "node:crypto";
import { ApiError } from "./errors.ts";

const OPEN_PATHS = /^\/health(\/|$)/;

async function digest(text: string): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text)));
}

/**
 * Bearer API keys. Keys are compared as SHA-256 digests with a constant-time comparison, against
 * every configured key, so neither the length nor the prefix of a key leaks through timing; every
 * failure gets the same 401. Health checks stay open for probes.
 */
export function apiKeys(keys: string[]): MiddlewareHandler {
  const digests = Promise.all(keys.map(digest));
  return async (c, next) => {
    if (keys.length === 0 || OPEN_PATHS.test(c.req.path) || c.req.method === "OPTIONS") return await next();
    const header = c.req.header("authorization") ?? "";
    // the scheme is case-insensitive and followed by one or more spaces (RFC 9110, 11.1 and 11.4)
    const presented = await digest(/^bearer +(.*)$/i.exec(header)?.[1] ?? "");
    let match = false;
    for (const known of await digests) match = timingSafeEqual(known, presented) || match;
    if (!match) {
      throw new ApiError(
        401,
        "unauthorized",
        "a valid API key is required: Authorization: Bearer <key>",
        undefined,
        {
          "WWW-Authenticate": 'Bearer realm="smooth-diffusion"',
        },
      );
    }
    await next();
  };
}

/** CORS for the configured origins ("*" for any); none configured: no CORS headers at all. */
export function corsFor(origins: string[]): MiddlewareHandler {
  if (origins.length === 0) return async (_c, next) => await next();
  return cors({
    origin: origins.includes("*") ? "*" : origins,
    allowHeaders: ["Content-Type", "Authorization", "Accept"],
    allowMethods: ["GET", "POST", "OPTIONS"],
    exposeHeaders: ["Retry-After", "X-Seed"],
    maxAge: 600,
  });
}

const TIMEOUT = "TimeoutError";
const SHUTDOWN = "ShutdownError";

/** The requests whose work is under way: a shutdown stops them all, then waits for them to end. */
export class RequestWork {
  #stops = new Set<(reason: DOMException) => void>();
  #idle: (() => void)[] = [];
  #stopping?: DOMException;

  get size(): number {
    return this.#stops.size;
  }

  /** Registers a request's `stop`; the returned function says its work has ended. */
  add(stop: (reason: DOMException) => void): () => void {
    if (this.#stopping) stop(this.#stopping);
    this.#stops.add(stop);
    return () => {
      if (!this.#stops.delete(stop) || this.#stops.size > 0) return;
      for (const resolve of this.#idle.splice(0)) resolve();
    };
  }

  /** Aborts every request's work, and any that comes later, with a shutdown reason. */
  stopAll(): void {
    this.#stopping = new DOMException("the server is shutting down", SHUTDOWN);
    for (const stop of [...this.#stops]) stop(this.#stopping);
  }

  /** Resolves once no request's work is under way. */
  ended(): Promise<void> {
    return this.#stops.size === 0 ? Promise.resolve() : new Promise((resolve) => this.#idle.push(resolve));
  }
}

/**
 * The signal a request's work runs under (`c.get("signal")`), aborted by the first of: the client's
 * request signal, the deadline, `clientLeft(c)` (a streamed reply whose reader went away), or a
 * shutdown (`requests.stopAll()`). The deadline and the client listener end with the work: when the
 * handler returns, or, for a reply that goes on working after that (a stream, `workContinues(c)`),
 * when it says it is done; only then does it leave `requests`.
 */
export function deadline(ms: number, requests = new RequestWork()): MiddlewareHandler {
  return async (c, next) => {
    // A plain controller reached through a listener rather than AbortSignal.any, whose dependents Deno
    // holds weakly (denoland/deno#29075).
    const work = new AbortController();
    const client = c.req.raw.signal;
    let stopped = false, finished = false, continues = false;
    const disarm = () => {
      clearTimeout(timer);
      client.removeEventListener("abort", leave);
    };
    const stop = (reason: DOMException) => {
      if (stopped || finished) return;
      stopped = true;
      disarm();
      work.abort(reason);
    };
    const leave = () => stop(new DOMException("the client went away", "AbortError"));
    const timer = setTimeout(() => stop(new DOMException("the request ran past its deadline", TIMEOUT)), ms);
    Deno.unrefTimer(timer);
    if (client.aborted) leave();
    else client.addEventListener("abort", leave, { once: true });
    const ended = requests.add(stop);
    const finish = () => {
      if (finished) return;
      finished = true;
      disarm();
      ended();
    };
    c.set("signal", work.signal);
    c.set("leave", leave);
    c.set("continues", () => {
      continues = true;
      return finish;
    });
    try {
      await next();
    } finally {
      if (!continues) finish();
    }
  };
}

/**
 * For a reply that goes on working after its handler returns (a stream): the deadline and the
 * client listener stay until the returned function is called, when that work is done.
 */
export function workContinues(c: Context): () => void {
  return (c.get("continues") as (() => () => void) | undefined)?.() ?? (() => {});
}

/**
 * Ends the request's work because its client is gone. Needed for streamed replies: when a client
 * drops a stream, Deno cancels the response body but does not always abort the request's signal
 * (measured in the soak, tests/robustness_test.ts: 14 of 41 dropped streams aborted it).
 */
export function clientLeft(c: Context): void {
  (c.get("leave") as (() => void) | undefined)?.();
}

/** The client went away (it closed the connection or dropped a streamed reply). */
export function isClientGone(c: Context): boolean {
  const signal = c.get("signal") as AbortSignal | undefined;
  return c.req.raw.signal.aborted ||
    (!!signal?.aborted && signal.reason?.name !== TIMEOUT && signal.reason?.name !== SHUTDOWN);
}

function stoppedBy(c: Context, error: unknown, name: string): boolean {
  const signal = c.get("signal") as AbortSignal | undefined;
  return !isClientGone(c) && !!signal?.aborted && signal.reason?.name === name &&
    (error === signal.reason || (error instanceof DOMException && error.name === name));
}

/** The request's work was stopped by its deadline, with the client still there. */
export function isDeadline(c: Context, error: unknown): boolean {
  return stoppedBy(c, error, TIMEOUT);
}

/** The request's work was stopped because the server is shutting down, with the client still there. */
export function isShutdown(c: Context, error: unknown): boolean {
  return stoppedBy(c, error, SHUTDOWN);
}

/** The error a request stopped by a shutdown gets. */
export const SHUTDOWN_ERROR = {
  code: "shutting_down",
  message: "the server shut down before the request finished; retry on another replica",
} as const;
