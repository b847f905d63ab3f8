/** One error shape for every failure: {"error": {"code", "message", "field"?}}. */
import type { Context } from "hono";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import type { z } from "zod";
import { EngineUnavailable, TaskError } from "../engine/errors.ts";

/** The longest message and field an error carries: clients choose keys, paths and values of any size. */
export const MAX_MESSAGE_CHARS = 1024;
const MAX_FIELD_CHARS = 256;

function clip(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max - 1)}…`;
}

export class ApiError extends Error {
  readonly field?: string;
  constructor(
    readonly status: ContentfulStatusCode,
    readonly code: string,
    message: string,
    field?: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(clip(message, MAX_MESSAGE_CHARS));
    this.field = field === undefined ? undefined : clip(field, MAX_FIELD_CHARS);
  }
}

export function errorBody(code: string, message: string, field?: string) {
  return {
    error: {
      code,
      message: clip(message, MAX_MESSAGE_CHARS),
      ...(field !== undefined ? { field: clip(field, MAX_FIELD_CHARS) } : {}),
    },
  };
}

type Issue = z.core.$ZodIssue;

/** zod's own bound on integers, reported where the field's real bound is also broken. */
const SAFE_INTEGER_NOTE = (issue: Issue) =>
  (issue.code === "too_big" || issue.code === "too_small") && issue.origin === "int";

/** The issue to report of a list: the first, unless it is only the safe-integer bound and the field has its own. */
function firstIssue(issues: Issue[]): Issue {
  const [first] = issues;
  if (!SAFE_INTEGER_NOTE(first)) return first;
  const same = (issue: Issue) =>
    issue !== first && issue.path.length === first.path.length &&
    issue.path.every((p, i) => p === first.path[i]);
  return issues.find((issue) => same(issue) && issue.code === first.code) ?? first;
}

/** A key the value lacks: the issue's input (parsed with reportInput), else zod's message says so. */
const lacks = (issue: Issue) =>
  "input" in issue ? issue.input === undefined : / received undefined$/.test(issue.message);

/**
 * How far a value is from one branch of a union, by its shape: a wrong type at the branch's root
 * (far), keys the branch does not know, and keys it needs that the value lacks. Wrong values of the
 * right keys do not count: those are what the client got wrong within the form it chose.
 */
function distance(issues: Issue[]): number {
  let score = 0;
  for (const issue of issues) {
    if (issue.path.length === 0 && issue.code === "invalid_type") score += 1000;
    else if (issue.path.length === 0 && issue.code === "unrecognized_keys") score += issue.keys.length;
    else if (issue.path.length === 1 && issue.code === "invalid_type" && lacks(issue)) score += 1;
  }
  return score;
}

/**
 * The most specific issue: inside a union, the branch closest to the value's shape (see `distance`);
 * where two are equally close and neither fits, no branch is the one the client meant, and the
 * union's own message (which lists the forms) is reported.
 */
function innermost(issue: Issue): { issue: Issue; path: PropertyKey[] } {
  if (issue.code !== "invalid_union" || !issue.errors?.length) return { issue, path: issue.path };
  const branches = issue.errors.filter((b) => b.length > 0);
  if (branches.length === 0) return { issue, path: issue.path };
  const distances = branches.map(distance);
  const best = Math.min(...distances);
  const closest = branches.filter((_, i) => distances[i] === best);
  if (closest.length > 1 && best > 0) return { issue, path: issue.path };
  const deepest = closest.map((branch) => innermost(firstIssue(branch))).reduce((a, b) =>
    b.path.length > a.path.length ? b : a
  );
  return { issue: deepest.issue, path: [...issue.path, ...deepest.path] };
}

/** zod's message, except for unknown keys: a few of them, clipped, and how many (zod lists every one). */
function messageOf(issue: Issue): string {
  if (issue.code !== "unrecognized_keys") return issue.message;
  const shown = issue.keys.slice(0, 5).map((k) => JSON.stringify(clip(k, 64)));
  const more = issue.keys.length - shown.length;
  return `Unrecognized key${issue.keys.length > 1 ? "s" : ""}: ${shown.join(", ")}${
    more > 0 ? ` and ${more} more (${issue.keys.length} in all)` : ""
  }`;
}

/** Fields whose "too big" is one of the server's caps (limit_exceeded), not a malformed value. */
const LIMITED_FIELDS = new Set(["width", "height", "steps", "num_images", "output_format", "animation"]);

export function fromZodError(error: z.ZodError): ApiError {
  const { issue, path } = innermost(firstIssue(error.issues));
  const field = path.map(String).join(".");
  const tooBig = issue.code === "too_big" && LIMITED_FIELDS.has(field);
  return new ApiError(
    400,
    tooBig ? "limit_exceeded" : "invalid_request",
    `${field || "body"}: ${messageOf(issue)}`,
    field || undefined,
  );
}

export function errorResponse(c: Context, error: ApiError): Response {
  for (const [name, value] of Object.entries(error.headers)) c.header(name, value);
  return c.json(errorBody(error.code, error.message, error.field), error.status);
}

/**
 * The client-facing error of a failure that has one: the request's own (ApiError), a task's
 * (TaskError, from the engine) or the engine's absence (503, retry). Undefined for the server's faults.
 */
export function asApiError(error: unknown): ApiError | undefined {
  if (error instanceof ApiError) return error;
  if (error instanceof TaskError) return new ApiError(error.status, error.code, error.message, error.field);
  if (error instanceof EngineUnavailable) {
    return new ApiError(503, error.code, error.message, undefined, { "Retry-After": "1" });
  }
  return undefined;
}
