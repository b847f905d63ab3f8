/** One error shape for every failure: {"error": {"code", "message", "field"?}}. */
import type { Context } from "hono";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import type { z } from "zod";

export class ApiError extends Error {
  constructor(
    readonly status: ContentfulStatusCode,
    readonly code: string,
    message: string,
    readonly field?: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

export function errorBody(code: string, message: string, field?: string) {
  return { error: { code, message, ...(field !== undefined ? { field } : {}) } };
}

type Issue = z.core.$ZodIssue;

/** The most specific issue: inside a union, the branch that got furthest into the value. */
function innermost(issue: Issue): { issue: Issue; path: PropertyKey[] } {
  if (issue.code !== "invalid_union" || !issue.errors?.length) return { issue, path: issue.path };
  const branches = issue.errors.filter((b) => b.length > 0).map((branch) => innermost(branch[0]));
  const deepest = branches.reduce((a, b) => (b.path.length > a.path.length ? b : a), {
    issue,
    path: [] as PropertyKey[],
  });
  return { issue: deepest.issue, path: [...issue.path, ...deepest.path] };
}

export function fromZodError(error: z.ZodError): ApiError {
  const { issue, path } = innermost(error.issues[0]);
  const field = path.map(String).join(".");
  const tooBig = issue.code === "too_big" && ["width", "height", "steps", "num_images"].includes(field);
  return new ApiError(
    400,
    tooBig ? "limit_exceeded" : "invalid_request",
    `${field || "body"}: ${issue.message}`,
    field || undefined,
  );
}

export function errorResponse(c: Context, error: ApiError): Response {
  for (const [name, value] of Object.entries(error.headers)) c.header(name, value);
  return c.json(errorBody(error.code, error.message, error.field), error.status);
}
