/**
 * The routes of the route table and the methods each takes: a request for a route by a method it
 * does not take gets 405 with `Allow` (OPTIONS gets 204 with it), and metrics label requests only
 * with these routes and a fixed set of methods, whatever a client sends.
 */
import type { Context } from "hono";
import { errorBody } from "./errors.ts";

/** Method labels: the standard ones a client may send to this server; anything else is "other". */
const METHOD_LABELS = new Set(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]);
const ORDER = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];

export function methodLabel(method: string): string {
  return METHOD_LABELS.has(method) ? method : "other";
}

interface PathMethods {
  pattern: string;
  regex: RegExp;
  methods: string[];
}

export class RouteMatcher {
  readonly #routes: PathMethods[];

  constructor(routes: { method: string; path: string }[]) {
    const byPattern = new Map<string, Set<string>>();
    for (const { path, method } of routes) {
      const methods = byPattern.get(path) ?? new Set();
      methods.add(method);
      if (method === "GET") methods.add("HEAD"); // Hono answers HEAD with the GET handler
      byPattern.set(path, methods);
    }
    this.#routes = [...byPattern].map(([pattern, methods]) => ({
      pattern,
      regex: new RegExp(
        `^${
          pattern.split("/").map((part) =>
            part.startsWith(":") ? "[^/]+" : part === "*" ? ".*" : part.replace(/[.+?^${}()|[\]\\*]/g, "\\$&")
          ).join("/")
        }$`,
      ),
      methods: ORDER.filter((m) => methods.has(m)),
    }));
  }

  /** The route `path` belongs to, if any. */
  match(path: string): PathMethods | undefined {
    return this.#routes.find((route) => route.regex.test(path));
  }

  /** The label of `path` in metrics: its route's pattern, or "unmatched". */
  label(path: string): string {
    return this.match(path)?.pattern ?? "unmatched";
  }

  /** The reply to a request no handler took: 405 with Allow for a known route, else 404. */
  notFound(c: Context): Response {
    const route = this.match(c.req.path);
    if (!route) {
      return c.json(errorBody("not_found", `no route for ${c.req.method} ${c.req.path}`), 404);
    }
    if (c.req.method === "OPTIONS") {
      return c.body(null, 204, { Allow: [...route.methods, "OPTIONS"].join(", ") });
    }
    const allow = route.methods.join(", ");
    c.header("Allow", allow);
    return c.json(
      errorBody(
        "method_not_allowed",
        `${route.pattern} takes ${allow}, not ${c.req.method.slice(0, 32)}`,
      ),
      405,
    );
  }
}
