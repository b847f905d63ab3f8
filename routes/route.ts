/**
 * One route of the API as the route table (table.ts) lists it: what registers it in the app, what
 * guards it and what documents it in /openapi.json, together.
 */
import type { Context } from "hono";
import type { z } from "zod";
import { ApiError, fromZodError } from "./errors.ts";
import { inSpan, type Span } from "../telemetry.ts";

/** What the app's middleware sets on each request's context. */
export type AppEnv = {
  Variables: { span: Span; signal: AbortSignal; leave: () => void; continues: () => () => void };
};
export type AppContext = Context<AppEnv>;
export type Handler = (c: AppContext) => Response | Promise<Response>;

/** An OpenAPI response object. */
export interface ResponseDoc {
  description: string;
  content?: Record<string, { schema: unknown }>;
}

/** What /openapi.json says of a route besides its method, path and request body. */
export interface RouteDoc {
  summary: string;
  description?: string;
  /** By status code. */
  responses: Record<string, ResponseDoc>;
}

export interface Route {
  method: "GET" | "POST" | "DELETE";
  /** Hono's pattern: `:name` is a parameter. */
  path: string;
  /**
   * Runs the model: refused with 503 `draining` while the server shuts down, and run as a job
   * when the request says `Prefer: respond-async`.
   */
  task: boolean;
  handler: Handler;
  /** The JSON body's schema, for routes made by `jsonRoute` (which validates with it). */
  request?: z.ZodType;
  /**
   * The route's entry in /openapi.json: every route of this server's own API has one; the routes
   * of the client APIs (OpenAI, AUTOMATIC1111) follow those APIs' own documents.
   */
  doc?: RouteDoc;
  /** Answered before the API-key check: the playground page, which asks for the key itself. */
  beforeApiKey?: true;
}

export async function readJson(c: { req: { json: () => Promise<unknown> } }): Promise<unknown> {
  try {
    return await c.req.json();
  } catch {
    throw new ApiError(400, "invalid_json", "the request body is not valid JSON");
  }
}

export function validate<S extends z.ZodType>(schema: S, body: unknown, span: Span): Promise<z.infer<S>> {
  return inSpan("validate", span, () => {
    // the input in each issue tells a key the value lacks from a key of the wrong type (errors.ts)
    const parsed = schema.safeParse(body, { reportInput: true });
    if (!parsed.success) throw fromZodError(parsed.error);
    return parsed.data;
  });
}

/** A route whose JSON body `request` checks (400 naming the field) before `handle` gets it. */
export function jsonRoute<S extends z.ZodType>(
  route: Omit<Route, "handler" | "request"> & {
    request: S;
    handle: (c: AppContext, body: z.infer<S>) => Promise<Response>;
  },
): Route {
  const { handle, ...rest } = route;
  return {
    ...rest,
    handler: async (c) => handle(c, await validate(route.request, await readJson(c), c.var.span)),
  };
}
