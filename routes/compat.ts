/**
 * What the routes that speak other APIs (OpenAI Images in openai.ts, AUTOMATIC1111 in a1111.ts)
 * share: each translates a request into this server's own /generate body, runs it through the same
 * validation, admission and batcher (`GenerateNative`, wired in app.ts), and translates the reply
 * and the errors back into its API's shapes.
 */
import type { Context } from "hono";
import { ApiError, asApiError } from "./errors.ts";

/** Runs a native /generate body (already translated) and returns the native JSON reply. */
export type GenerateNative = (c: Context, body: Record<string, unknown>) => Promise<Response>;

/**
 * The values of a field this server cannot honour that mean "nothing asked of the server": a list
 * ("*" for any value), or a test on the value (and the whole body) with the reason a refusal gives.
 */
export type OffRule =
  | readonly unknown[]
  | { off: (value: unknown, body: Record<string, unknown>) => boolean; why: string };

/** Refuses, with a 400 naming it, the first field that holds more than "off" (absent and null always are). */
export function refuseUnlessOff(body: Record<string, unknown>, rules: Record<string, OffRule>): void {
  for (const [key, rule] of Object.entries(rules)) {
    const value = body[key];
    if (value === undefined || value === null) continue;
    const test = "off" in rule ? rule : undefined;
    const list = rule as readonly unknown[];
    if (test ? test.off(value, body) : list.includes("*") || list.includes(value)) continue;
    const why = test ? `: ${test.why}` : "";
    throw new ApiError(
      400,
      "unsupported_value",
      `${key}: ${JSON.stringify(value)} is not supported by this server${why}`,
      key,
    );
  }
}

/**
 * Runs a translated route; an ApiError (the route's own, or one from the native validation,
 * handler or engine) becomes the API's error body from `render`, with the error's status and headers.
 */
export async function translateErrors(
  c: Context,
  run: () => Promise<Response>,
  render: (error: ApiError) => unknown,
): Promise<Response> {
  try {
    return await run();
  } catch (thrown) {
    const error = asApiError(thrown);
    if (!error) throw thrown;
    for (const [name, value] of Object.entries(error.headers)) c.header(name, value);
    return c.json(render(error), error.status);
  }
}
