/**
 * Request bodies, read whole before any handler runs: bounded in size (413), in time (408 past
 * `timeoutMs`, the connection closed) and checked complete (400 when the client's stream ends
 * before the body does: a chunked body cut short, or fewer bytes than its Content-Length). The
 * bytes are left in Hono's body cache, so `c.req.json()`, `text()`, `arrayBuffer()` and
 * `parseBody()` read them from memory and `c.req.raw` stays the request Deno gave.
 *
 * Deno.serve (2.9) has no read timeouts of its own: this bounds the body; the request line and
 * headers, read before any of this code runs, are bounded only by a proxy in front (README).
 */
import type { MiddlewareHandler } from "hono";
import { ApiError } from "./errors.ts";

export function readBody(maxBytes: number, timeoutMs: number): MiddlewareHandler {
  const tooLarge = () => new ApiError(413, "payload_too_large", `the body exceeds ${maxBytes} bytes`, "body");
  return async (c, next) => {
    const raw = c.req.raw;
    if (!raw.body || "arrayBuffer" in c.req.bodyCache) return await next();
    const declared = raw.headers.get("content-length");
    if (declared !== null && !raw.headers.has("transfer-encoding") && Number(declared) > maxBytes) {
      throw tooLarge();
    }
    const reader = raw.body.getReader();
    let late = false;
    const timer = setTimeout(() => {
      late = true;
      reader.cancel().catch(() => {});
    }, timeoutMs);
    const chunks: Uint8Array[] = [];
    let size = 0;
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        size += value.length;
        if (size > maxBytes) {
          reader.cancel().catch(() => {});
          throw tooLarge();
        }
        chunks.push(value);
      }
    } catch (error) {
      if (error instanceof ApiError) throw error;
      if (!late) {
        // Deno's stream fails when the connection ends inside the body ("BadResource: Cannot read
        // request body as underlying resource unavailable"): the client's fault, not the server's.
        throw new ApiError(
          400,
          "incomplete_body",
          "the request body ended before it was complete (the connection closed inside it)",
          "body",
        );
      }
    } finally {
      clearTimeout(timer);
    }
    if (late) {
      throw new ApiError(
        408,
        "body_timeout",
        `the request body did not arrive within ${timeoutMs} ms (BODY_READ_TIMEOUT_MS)`,
        "body",
        { Connection: "close" },
      );
    }
    const bytes = new Uint8Array(size);
    let at = 0;
    for (const chunk of chunks) {
      bytes.set(chunk, at);
      at += chunk.length;
    }
    // Hono keeps promises in its body cache (its type says values)
    (c.req.bodyCache as Record<string, unknown>).arrayBuffer = Promise.resolve(bytes.buffer);
    await next();
  };
}
