/**
 * GET /: the playground page, `playground.html` beside this file, read once. One self-contained page
 * (inline CSS and JavaScript, no build step, nothing fetched from elsewhere) that calls this server's
 * own API. It is served before the API-key check: the page itself asks for the key and sends it as
 * `Authorization: Bearer` on every API call, which the check still guards.
 */
import type { Context } from "hono";

const PAGE = Deno.readTextFileSync(new URL("./playground.html", import.meta.url));

/** Only this origin's API and inline code; images arrive as data URLs. */
const POLICY = [
  "default-src 'none'",
  "script-src 'unsafe-inline'",
  "style-src 'unsafe-inline'",
  "img-src 'self' data: blob:",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join("; ");

export function playground(c: Context): Response {
  return c.html(PAGE, 200, {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": POLICY,
    "X-Content-Type-Options": "nosniff",
  });
}
