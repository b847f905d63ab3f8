/** Test support: a real server on a loopback port, over the embedded model (or TEST_MODEL). */
import { type Config, loadConfig } from "../config.ts";
import { type RunningServer, startServer } from "../server.ts";

export const MODEL_DIR = Deno.env.get("TEST_MODEL") ??
  new URL("../models/tiny-sd-shapes", import.meta.url).pathname;
export const FIXTURES_DIR = Deno.env.get("TEST_FIXTURES") ??
  new URL("./fixtures/tiny-sd-shapes", import.meta.url).pathname;

export function testConfig(env: Record<string, string> = {}): Config {
  return loadConfig({ PORT: "0", HOST: "127.0.0.1", MODEL: MODEL_DIR, HOME: Deno.env.get("HOME"), ...env });
}

export async function withServer<T>(
  env: Record<string, string>,
  fn: (server: RunningServer) => Promise<T>,
): Promise<T> {
  const server = await startServer(testConfig(env), { quiet: true });
  try {
    return await fn(server);
  } finally {
    await server.close();
  }
}

export function post(url: string, body: unknown, headers: Record<string, string> = {}, signal?: AbortSignal) {
  return fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
    signal,
  });
}

export function decodeBase64(text: string): Uint8Array {
  return Uint8Array.from(atob(text), (ch) => ch.charCodeAt(0));
}

export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tolerance: number,
  what = "values",
) {
  if (actual.length !== expected.length) {
    throw new Error(`${what}: length ${actual.length} != ${expected.length}`);
  }
  let worst = 0, at = -1;
  for (let i = 0; i < actual.length; i++) {
    const d = Math.abs(actual[i] - expected[i]);
    if (!(d <= worst)) [worst, at] = [d, i];
  }
  if (!(worst <= tolerance)) {
    throw new Error(
      `${what}: max difference ${worst} at ${at} (${actual[at]} vs ${expected[at]}) exceeds ${tolerance}`,
    );
  }
}
