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

export function fromZodError(error: z.ZodError): ApiError {
  const issue = error.issues[0];
  const field = issue.path.map(String).join(".");
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
