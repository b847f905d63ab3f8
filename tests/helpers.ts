/** Test support: a real server on a loopback port, over the embedded model (or TEST_MODEL). */
import { type Config, loadConfig } from "../config.ts";
import sharp from "sharp";
import * as ort from "onnxruntime-node";
import { type RunningServer, startServer } from "../server.ts";
import { loadServing } from "../engine/load.ts";
import type { DiffusionModel } from "../pipeline/model.ts";
import { type MainProcess, spawnMain as spawnMainProcess } from "../support/main_process.ts";

export const MODEL_DIR = Deno.env.get("TEST_MODEL") ??
  new URL("../models/tiny-sd-shapes", import.meta.url).pathname;
export const FIXTURES_DIR = Deno.env.get("TEST_FIXTURES") ??
  new URL("./fixtures/tiny-sd-shapes", import.meta.url).pathname;

export function testConfig(env: Record<string, string> = {}): Config {
  return loadConfig({ PORT: "0", HOST: "127.0.0.1", MODEL: MODEL_DIR, HOME: Deno.env.get("HOME"), ...env });
}

/** The test model loaded in this process (beside any server's engine), for computing expected values. */
export async function withModel<T>(fn: (model: DiffusionModel) => Promise<T>): Promise<T> {
  const { model } = await loadServing(testConfig());
  try {
    return await fn(model);
  } finally {
    await model.release();
  }
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
  return Uint8Array.fromBase64(text);
}

/** The raw RGB bytes of a base64-encoded image. */
export async function pixels(b64: string): Promise<Uint8Array> {
  return new Uint8Array(await sharp(decodeBase64(b64)).raw().toBuffer());
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

/** `main.ts` in a child process (support/main_process.ts), over the test model unless `env` names one. */
export function spawnMain(
  env: Record<string, string>,
  options: { stderr?: boolean } = {},
): Promise<MainProcess> {
  return spawnMainProcess({ MODEL: MODEL_DIR, ...env }, options);
}

/** Why ONNX Runtime's WebGPU provider cannot create a session here, or undefined when it can. */
export async function webgpuUnavailable(): Promise<string | undefined> {
  try {
    const probe = await ort.InferenceSession.create(`${MODEL_DIR}/text_encoder/model.onnx`, {
      executionProviders: ["webgpu"],
    });
    await probe.release();
  } catch (error) {
    return String((error as Error).message ?? error).split("\n")[0];
  }
}

/**
 * A metric's value in `/metrics` (Prometheus text): the sum over its series whose labels include
 * `labels` (OpenTelemetry's exporter adds `otel_scope_name` to every series).
 */
export async function metricValue(
  url: string,
  name: string,
  labels: Record<string, string> = {},
): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  let total = 0, found = false;
  for (const line of text.split("\n")) {
    const match = /^([\w:]+)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!match || match[1] !== name) continue;
    const has = Object.entries(labels).every(([k, v]) => (match[2] ?? "").includes(`${k}="${v}"`));
    if (has) [total, found] = [total + Number(match[3]), true];
  }
  if (!found) throw new Error(`/metrics has no ${name} ${JSON.stringify(labels)}`);
  return total;
}
