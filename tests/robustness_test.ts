/**
 * Robustness: a seeded fuzz suite of hostile requests over every route, and a soak of mixed routes
 * with adapter churn and clients that disconnect mid-generation. The seeds are fixed, so a failure
 * reproduces; each test prints what it sent and measured.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import sharp from "sharp";
import { metricValue, MODEL_DIR, pixels, post, spawnMain, testConfig, withServer } from "./helpers.ts";
import { bmp, flatPng, ico, jp2, rawExchange } from "./hostile.ts";
import { forEachConcurrently } from "../pipeline/concurrency.ts";
import { FakeHub } from "../support/hub_server.ts";
import { findLoraTargets } from "../loras/graph_rewrite.ts";
import { randomAdapter } from "../support/random_adapter.ts";
import { uint32Stream } from "../pipeline/rng.ts";
import { maxAbsDifference } from "../support/parity.ts";
import { createApp } from "../routes/app.ts";
import { MAX_MESSAGE_CHARS } from "../routes/errors.ts";

/** Uniform draws in [0, 1) from a fixed seed. */
function random(seed: number): () => number {
  const stream = uint32Stream(seed);
  return () => stream.next().value / 4294967296;
}

function pick<T>(rand: () => number, items: readonly T[]): T {
  return items[Math.floor(rand() * items.length)];
}

async function png(width: number, height: number): Promise<Uint8Array> {
  const buffer = await sharp({
    create: {
      width,
      height,
      channels: 3,
      background: "#3060a0",
      noise: { type: "gaussian", mean: 128, sigma: 40 },
    },
  }).png().toBuffer();
  return new Uint8Array(buffer);
}

/** Image files a careless or hostile client might send, as bytes. */
async function hostileFiles(rand: () => number): Promise<Uint8Array[]> {
  const valid = await png(64, 64);
  const truncated = valid.slice(0, Math.floor(valid.length * (0.2 + 0.6 * rand())));
  const flipped = valid.slice();
  for (let i = 0; i < 40; i++) flipped[16 + Math.floor(rand() * (flipped.length - 16))] ^= 0xff;
  const noise = Uint8Array.from({ length: 2000 }, () => Math.floor(rand() * 256));
  // A PNG whose header claims 100000 x 100000 pixels (a decompression bomb's first bytes).
  const bomb = valid.slice(0, 33);
  new DataView(bomb.buffer).setUint32(16, 100_000);
  new DataView(bomb.buffer).setUint32(20, 100_000);
  const noisy = sharp({
    create: {
      width: 48,
      height: 40,
      channels: 4,
      background: "#3060a080",
      noise: { type: "gaussian", mean: 128, sigma: 40 },
    },
  });
  const as = async (image: ReturnType<typeof sharp>) => new Uint8Array(await image.toBuffer());
  return [
    truncated,
    flipped,
    noise,
    bomb,
    new Uint8Array(0),
    await png(1, 1),
    await png(600, 8),
    flatPng(1, 65_536), // past the aspect-ratio bound: refused from its header
    flatPng(2048, 2048), // 4 Mpixel, a few KB: decoded within the caps
    bmp(),
    ico(),
    jp2(),
    new TextEncoder().encode('<svg xmlns="http://www.w3.org/2000/svg" width="99999" height="99999"/>'),
    await as(noisy.clone().gif()),
    await as(noisy.clone().tiff()),
    await as(noisy.clone().webp()),
    await as(noisy.clone().png({ palette: true })),
    await as(noisy.clone().toColourspace("b-w").png()),
    await as(noisy.clone().jpeg({ progressive: true })),
    await as(noisy.clone().toColourspace("cmyk").jpeg()),
    await as(noisy.clone().jpeg().withMetadata({ orientation: 6 })),
    await as(noisy.clone().png({ compressionLevel: 0 }).toColourspace("rgb16")),
  ];
}

/** Image payloads for JSON fields: each file as base64, and data URLs honest, lying and malformed. */
function hostileImages(files: Uint8Array[]): string[] {
  const valid = files[5].toBase64();
  return [
    ...files.map((file) => file.toBase64()),
    `data:image/png;base64,${files[2].toBase64()}`,
    `data:text/html;base64,${valid}`,
    `data:image/jpeg;base64,${valid}`,
    `data:image/png,${valid}`,
    `data:;base64,${valid}`,
    `DATA:IMAGE/PNG;BASE64,${valid}`,
    "data:image/png;base64,",
    "data:",
    "=".repeat(64),
    "%%%",
    `${valid.slice(0, 20)}\n${valid.slice(20)}`,
  ];
}

const VALID_IMAGE = 5; // hostileImages(...)[5]: a 1 x 1 PNG

/** Values of every JSON type, and edge values of the ones the schemas take. */
function hostileValue(rand: () => number, images: string[]): unknown {
  return pick(rand, [
    () => null,
    () => true,
    () => 0,
    () => -1,
    () => 1.5,
    () => 1e308,
    () => -1e308,
    () => 2 ** 53 + 2,
    () => -(2 ** 53) - 2,
    () => Number.MAX_SAFE_INTEGER,
    () => "",
    () => "x".repeat(5000),
    () => "\u0000\ud800",
    () => "NaN",
    () => "-1",
    () => "64x64",
    () => "99999x99999",
    () => [],
    () => [1, "a", null],
    () => ({}),
    () => ({ __proto__: { polluted: true } }),
    () => ({ constructor: { prototype: { polluted: true } } }),
    () => pick(rand, images),
    () => [pick(rand, images)],
    () => ({ repo: "../../etc/passwd" }),
    () => ({ repo: "smooth-diffusion/tiny-sd-shapes-smooth-lora" }),
    () => ({ repo: "smooth-diffusion/tiny-sd-shapes-smooth-lora", file: "missing.safetensors" }),
    () => [{ repo: "org/name", scale: 1e9 }],
    () => "<lora:../../etc/passwd:1> a",
    () => ({ shape: [1, 4, 100000, 100000], dtype: "float32", data: "AAAA" }),
    () => ({ shape: [1, 4, 8, 8], dtype: "float32", data: (new Uint8Array(12)).toBase64() }),
    () => ({ shape: [1, 4, 1, 2048], dtype: "float32", data: (new Uint8Array(4 * 4 * 2048)).toBase64() }),
    () => ({
      shape: [1, 4, 8, 8],
      dtype: "float32",
      data: (new Uint8Array(4 * 4 * 64).fill(0xff)).toBase64(),
    }),
    () => ({ prompt: "a", seed: 1, image: pick(rand, images) }),
    () => ({ prompt: "a" }),
    () => pick(rand, ["webp", "gif", "jpeg", "png", "none", "contain", "fill", "euler", "fixed-point"]),
  ])();
}

/** One mutation of a valid body: a field dropped, retyped, nested or added, or the whole body replaced. */
function mutate(
  rand: () => number,
  body: Record<string, unknown>,
  images: string[],
  extraKeys: string[],
): unknown {
  const keys = Object.keys(body);
  const copy: Record<string, unknown> = structuredClone(body);
  const mutations = 1 + Math.floor(rand() * 3);
  for (let m = 0; m < mutations; m++) {
    const kind = rand();
    const key = pick(rand, keys);
    if (kind < 0.2) delete copy[key];
    else if (kind < 0.6) copy[key] = hostileValue(rand, images);
    else if (kind < 0.7) copy[key] = { nested: copy[key] };
    else if (kind < 0.8) copy[pick(rand, extraKeys)] = hostileValue(rand, images);
    else if (kind < 0.85) copy[`unknown_${m}`] = hostileValue(rand, images);
    else if (kind < 0.9) {
      // an own key named as Object.prototype's members ("__proto__" assigned would set the prototype)
      Object.defineProperty(copy, pick(rand, ["__proto__", "constructor", "toString", "hasOwnProperty"]), {
        value: hostileValue(rand, images),
        enumerable: true,
        configurable: true,
        writable: true,
      });
    } else return hostileValue(rand, images);
  }
  return copy;
}

/** Bodies that are not JSON objects at all (or barely), sent raw. */
const RAW_BODIES = [
  "",
  "{",
  "null",
  "[]",
  '"just a string"',
  '{"prompt": "a", "steps": 2,}',
  "[".repeat(100_000) + "]".repeat(100_000),
  '{"a":'.repeat(5000) + "1" + "}".repeat(5000),
  "\u0000\u0001\u0002",
  "prompt=a&steps=2",
  "\ufeff{}",
  '{"prompt": "a", "prompt": 7}',
  '{"__proto__": {"polluted": true}, "prompt": "a", "steps": 1}',
  '{"prompt": "a", "steps": 1e999}',
  '{"prompt": "\\ud800", "steps": 1}',
  `{"prompt": "${"a".repeat(200_000)}"}`,
  "1".repeat(2_000_000), // past MAX_BODY_BYTES
];

/** A native or translated route: a valid body and the keys a mutation may add. */
interface JsonRoute {
  path: string;
  valid: (images: string[]) => Record<string, unknown>;
  extra: string[];
}

const JSON_ROUTES: JsonRoute[] = [
  {
    path: "/generate",
    valid: () => ({ prompt: "a red circle", steps: 1, seed: 1, guidance_scale: 1 }),
    extra: ["lora", "image", "strength", "width", "height", "num_images", "output_format", "fit"],
  },
  {
    path: "/invert",
    valid: (images) => ({ image: images[VALID_IMAGE], prompt: "a", steps: 1 }),
    extra: ["lora", "image", "width", "height", "fit", "method", "output_format"],
  },
  {
    path: "/edit",
    valid: (images) => ({
      image: images[VALID_IMAGE],
      source_prompt: "a",
      target_prompt: "b",
      steps: 1,
      guidance_scale: 1,
    }),
    extra: ["lora", "image", "latent", "width", "height", "ratio", "output_format", "return_reconstruction"],
  },
  {
    path: "/interpolate",
    valid: () => ({
      from: { prompt: "a", seed: 1 },
      to: { prompt: "b", seed: 2 },
      steps: 1,
      frames: 2,
      guidance_scale: 1,
    }),
    extra: ["from", "to", "frames", "animation", "width", "height", "output_format", "lora"],
  },
  {
    path: "/v1/images/generations",
    valid: () => ({
      prompt: "a red circle",
      n: 1,
      size: "64x64",
      steps: 1,
      seed: 1,
      guidance_scale: 1,
      response_format: "b64_json",
    }),
    extra: ["model", "quality", "style", "size", "n", "output_format", "image", "mask", "lora", "stream"],
  },
  {
    path: "/sdapi/v1/txt2img",
    valid: () => ({ prompt: "a red circle", steps: 1, seed: 1, width: 64, height: 64, cfg_scale: 1 }),
    extra: [
      "sampler_name",
      "batch_size",
      "n_iter",
      "enable_hr",
      "override_settings",
      "alwayson_scripts",
      "cfg_scale",
    ],
  },
  {
    path: "/sdapi/v1/img2img",
    valid: (images) => ({
      init_images: [images[VALID_IMAGE]],
      prompt: "a",
      steps: 2,
      cfg_scale: 1,
      denoising_strength: 0.5,
    }),
    extra: [
      "init_images",
      "mask",
      "resize_mode",
      "denoising_strength",
      "include_init_images",
      "inpainting_fill",
    ],
  },
];

const METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/** Where a reply's error shape comes from: the native one everywhere, a translated API's own on its routes. */
function errorShapeProblem(path: string, status: number, text: string): string | undefined {
  if (text.length > 4096) return `a ${text.length}-byte error`;
  let json: any;
  try {
    json = JSON.parse(text);
  } catch {
    return "not JSON";
  }
  const native = json !== null && typeof json === "object" && Object.keys(json).join() === "error" &&
    typeof json.error === "object" && json.error !== null &&
    Object.keys(json.error).every((k) => ["code", "message", "field"].includes(k)) &&
    typeof json.error.code === "string" && json.error.code !== "" &&
    typeof json.error.message === "string" && json.error.message !== "" &&
    json.error.message.length <= MAX_MESSAGE_CHARS &&
    (json.error.field === undefined || typeof json.error.field === "string");
  if (native) return undefined;
  // OpenAI's {"error": {"message", "type", "param", "code"}} and A1111's {"error", "detail", ...}
  if (
    path.startsWith("/v1/images/") && typeof json?.error?.message === "string" &&
    (json.error.param === null || typeof json.error.param === "string")
  ) {
    return;
  }
  if (path.startsWith("/sdapi/") && typeof json?.error === "string" && typeof json?.detail === "string") {
    return;
  }
  if (path.startsWith("/v1/jobs/") && status !== 404) {
    return errorShapeProblem("/v1/images/", status, text) &&
      errorShapeProblem("/sdapi/", status, text); // a job's reply is its route's
  }
  return "not the error shape";
}

interface Sent {
  method: string;
  path: string;
  headers: Record<string, string>;
  body?: string | FormData;
  /** A request written on a socket as it is (malformed framing). */
  raw?: string;
}

Deno.test("fuzz: 10,000 seeded hostile requests over every route: no 5xx, one error shape, bounded resident memory, the same image before and after", async () => {
  const seed = 20261127;
  const rand = random(seed);
  const files = await hostileFiles(rand);
  const images = hostileImages(files);
  const cache = await Deno.makeTempDir();
  const env = {
    API_KEYS: "fuzz-key",
    MAX_STEPS: "4",
    MAX_FRAMES: "3",
    MAX_IMAGES: "2",
    MAX_PIXELS: String(128 * 128),
    MAX_BODY_BYTES: String(1 << 20),
    MAX_IMAGE_BYTES: String(256 << 10),
    BODY_READ_TIMEOUT_MS: "300",
    MAX_CONCURRENT_REQUESTS: "64",
    HF_HUB_OFFLINE: "1", // adapters from the caches only: no request reaches the network
    HF_HUB_CACHE: cache,
  };
  const started = performance.now();
  try {
    await withServer(env, async ({ url, engine }) => {
      // Every route of the app's route table, so a route added later is fuzzed too.
      const probe = createApp({ engine, config: testConfig(env), draining: () => false });
      const routes = probe.routes.map((r) => ({ method: r.method, path: r.path }));
      await probe.close();
      const auth = { authorization: "Bearer fuzz-key" };
      const reference = async () => {
        const generated =
          await (await post(`${url}/generate`, { prompt: "a red circle", steps: 2, seed: 1 }, auth))
            .json();
        const inverted =
          await (await post(`${url}/invert`, { image: images[VALID_IMAGE], prompt: "a", steps: 2 }, auth))
            .json();
        return [generated.images[0].data, inverted.latent.data];
      };
      const before = await reference();

      // ---------------------------------------------------------------- the requests, all drawn first
      const sent: Sent[] = [];
      const json = (path: string, body: string, headers: Record<string, string> = {}) =>
        sent.push({
          method: "POST",
          path,
          headers: { "content-type": "application/json", ...auth, ...headers },
          body,
        });
      const concrete = (path: string) =>
        path.replace(/:[^/]+/g, () => pick(rand, ["x", "0", "%2e%2e", "a".repeat(300)]));
      const target = 10_240;
      while (sent.length < target) {
        const r = rand();
        const route = pick(rand, JSON_ROUTES);
        if (r < 0.5) {
          // a mutated body on a JSON route
          json(route.path, JSON.stringify(mutate(rand, route.valid(images), images, route.extra)));
        } else if (r < 0.62) {
          // each image payload in each image field
          const image = pick(rand, images);
          const body: Record<string, unknown> = route.valid(images);
          if (route.path === "/interpolate") body[pick(rand, ["from", "to"])] = { prompt: "a", image };
          else if (route.path === "/sdapi/v1/img2img") body.init_images = [image];
          else body.image = image;
          json(route.path, JSON.stringify(body));
        } else if (r < 0.67) {
          json(route.path, pick(rand, RAW_BODIES));
        } else if (r < 0.7) {
          // OpenAI's edits: multipart with a hostile file and fields
          const form = new FormData();
          const file = pick(rand, files);
          if (rand() < 0.9) {
            form.append(
              "image",
              new Blob([file as BlobPart], { type: pick(rand, ["image/png", "text/plain", ""]) }),
              "x.png",
            );
          }
          if (rand() < 0.2) form.append("image", new Blob([files[5] as BlobPart]), "y.png");
          form.append("prompt", pick(rand, ["a", "", "x".repeat(5000)]));
          for (const key of ["n", "steps", "size", "strength", "mask", "lora", "seed", "response_format"]) {
            if (rand() < 0.3) form.append(key, String(hostileValue(rand, ["AAAA"])));
          }
          if (rand() < 0.5) form.append("steps", "2");
          sent.push({ method: "POST", path: "/v1/images/edits", headers: { ...auth }, body: form });
        } else if (r < 0.82) {
          // any route by any method, and paths that are no route
          const known = pick(rand, routes);
          const method = rand() < 0.8 ? pick(rand, METHODS) : `X${Math.floor(rand() * 1e6)}`;
          const path = rand() < 0.7 ? concrete(known.path) : pick(rand, [
            "/nope",
            `/${"a".repeat(4000)}`,
            "/generate/",
            "/GENERATE",
            "/%2e%2e/%2e%2e/etc/passwd",
            "/v1/jobs/",
            "/v1/models?x=" + "y".repeat(2000),
            "/health/../generate",
            "/\u00e9",
          ]);
          const body = method === "GET" || method === "HEAD"
            ? undefined
            : pick(rand, ["", "{}", '{"prompt":"a","steps":1}', pick(rand, RAW_BODIES)]);
          sent.push({ method, path, headers: { ...auth }, body });
        } else if (r < 0.9) {
          // headers: keys, Accept with weights, content types, asynchronous jobs
          const kind = rand();
          const headers: Record<string, string> = {};
          if (kind < 0.3) {
            Object.assign(headers, {
              authorization: pick(rand, [
                "",
                "Bearer",
                "bearer fuzz-key",
                "BEARER  fuzz-key",
                "Bearer fuzz-key2",
                "Basic fuzz-key",
                "Bearer \u00e9",
                "fuzz-key",
                "Bearer " + "k".repeat(10_000),
              ]),
            });
          } else {
            Object.assign(headers, auth);
            if (kind < 0.6) {
              headers.accept = pick(rand, [
                "image/png;q=0",
                "application/json;q=0",
                "image/webp;q=0.5, image/jpeg;q=0.9",
                "text/event-stream",
                "image/*",
                "*/*;q=0",
                "application/json;q=abc",
                ";;;,,,",
                "image/png, ".repeat(200),
              ]);
            } else if (kind < 0.8) {
              headers["content-type"] = pick(rand, [
                "text/plain",
                "multipart/form-data; boundary=x",
                "application/x-www-form-urlencoded",
                "application/json; charset=utf-16",
                "",
              ]);
            } else headers.prefer = pick(rand, ["respond-async", "respond-async, wait=1", "RESPOND-ASYNC"]);
          }
          // mostly bodies refused at validation (cheap), some valid ones (the model runs, 1-2 steps)
          const body = rand() < 0.1
            ? route.valid(images)
            : mutate(rand, route.valid(images), images, route.extra);
          sent.push({
            method: "POST",
            path: route.path,
            headers: { "content-type": "application/json", ...headers },
            body: JSON.stringify(body),
          });
        } else if (r < 0.905) {
          // framing only a socket can send: bodies cut short or late, headers malformed, smuggling
          const body = JSON.stringify(route.valid(images));
          const head =
            `POST ${route.path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer fuzz-key\r\nContent-Type: application/json\r\n`;
          const raw = pick(rand, [
            `${head}Transfer-Encoding: chunked\r\n\r\n${body.length.toString(16)}\r\n${body.slice(0, 10)}`,
            `${head}Content-Length: ${body.length + 10}\r\n\r\n${body}`,
            `${head}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`,
            `${head}Content-Length: 5\r\nContent-Length: 6\r\n\r\n{}`,
            `${head}Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n`,
            `${head}X: ${"a".repeat(100_000)}\r\n\r\n`,
            `POST ${route.path} HTTP/9.9\r\n\r\n`,
            "\r\n\r\n",
            `GET /${"%".repeat(10)} HTTP/1.1\r\nHost: x\r\n\r\n`,
          ]);
          sent.push({ method: "POST", path: route.path, headers: {}, raw });
        } else {
          // other paths and queries on the GET routes: status, job polling, listings
          const get = pick(rand, routes.filter((x) => x.method === "GET"));
          sent.push({
            method: "GET",
            path: concrete(get.path) + pick(rand, ["", "?", "?id_task=x", "?a=" + "%ff".repeat(100)]),
            headers: { ...auth },
          });
        }
      }

      // ---------------------------------------------------------------- sent, eight at a time
      const statuses = new Map<string, number>();
      const served = new Set<string>();
      const spent = new Map<string, number>();
      const failures: string[] = [];
      const memory: number[] = [], heap: number[] = [];
      const jobs: string[] = [];
      let done = 0;
      const one = async (request: Sent) => {
        try {
          await exchange(request);
        } catch (error) {
          failures.push(
            `client: ${request.method} ${request.path.slice(0, 80)}: ${(error as Error).message}`,
          );
        }
        if (++done % 1000 === 0) {
          (globalThis as { gc?: () => void }).gc?.();
          const m = Deno.memoryUsage();
          memory.push(m.rss);
          heap.push(m.heapUsed + m.external);
        }
      };
      const exchange = async (request: Sent) => {
        const t0 = performance.now();
        let status: number, text: string, headers = new Headers();
        if (request.raw !== undefined) {
          const exchange = await rawExchange(url, request.raw, { waitMs: 3000 });
          status = exchange.status;
          text = exchange.text.slice(exchange.text.indexOf("\r\n\r\n") + 4);
          if (!exchange.text.includes("application/json")) text = "";
        } else {
          const res = await fetch(`${url}${request.path}`, {
            method: request.method,
            headers: request.headers,
            body: request.body,
          });
          status = res.status;
          headers = res.headers;
          text = await res.text();
        }
        const method = METHODS.includes(request.method) ? request.method : "other";
        const key = `${request.raw !== undefined ? "socket" : method} ${status}`;
        statuses.set(key, (statuses.get(key) ?? 0) + 1);
        const spentKey = `${request.path.split("?")[0].slice(0, 40)} ${status}`;
        spent.set(spentKey, (spent.get(spentKey) ?? 0) + performance.now() - t0);
        if (status === 202 && headers.get("location")) jobs.push(headers.get("location")!);
        if (status === 200 && request.method === "POST") served.add(request.path);
        const what = () =>
          `${request.method} ${request.path.slice(0, 80)} ${status} ${
            String(request.raw ?? request.body ?? "").slice(0, 160)
          } -> ${text.slice(0, 300)}`;
        if (status >= 500) failures.push(what());
        else if (status >= 400 && text !== "" && request.method !== "HEAD") {
          const problem = errorShapeProblem(request.path, status, text);
          if (problem) failures.push(`${problem}: ${what()}`);
        }
      };
      await forEachConcurrently(sent.length, 8, (i) => one(sent[i]));
      // the jobs started along the way, polled once
      for (const location of jobs.slice(0, 50)) {
        await one({ method: "GET", path: location, headers: { ...auth } });
      }

      const seconds = (performance.now() - started) / 1000;
      const after = await reference();
      const mib = (b: number) => (b / 2 ** 20).toFixed(0);
      const byStatus = Object.fromEntries([...statuses].sort());
      console.log(
        `  seed ${seed}: ${sent.length} requests over ${routes.length} routes in ${seconds.toFixed(1)} s; ${
          JSON.stringify(byStatus)
        }; ` +
          `${jobs.length} jobs; RSS MiB after 1000, 2000, ...: ${
            memory.map(mib).join(", ")
          }; JS heap + external: ${heap.map(mib).join(", ")}`,
      );
      console.log(
        "  client time by route and status (s, 8 in flight): " +
          [...spent].sort((a, b) => b[1] - a[1]).slice(0, 8).map(([k, v]) => `${k}: ${(v / 1000).toFixed(1)}`)
            .join(", "),
      );
      assertEquals(
        failures.slice(0, 20),
        [],
        `${failures.length} failures:\n${failures.slice(0, 20).join("\n")}`,
      );
      for (const { path } of JSON_ROUTES) assert(served.has(path), `no request to ${path} stayed valid`);
      for (const route of routes) {
        assert(
          sent.some((s) =>
            new RegExp(`^${route.path.replace(/:[^/]+/g, "[^/]+")}(\\?|$)`).test(s.path) &&
            s.method === route.method
          ),
          `${route.method} ${route.path} was not fuzzed`,
        );
      }
      // Resident memory levels off once every shape has been seen (the first 2000 requests). With
      // --expose-gc (deno task test passes it) each sample follows a full collection, so what is left
      // is what the server keeps: then the bound is tight; without it, V8 collects when it likes.
      const collected = typeof (globalThis as { gc?: unknown }).gc === "function";
      const settled = Math.max(memory[0], memory[1]), late = Math.max(...memory.slice(2));
      const allowed = collected ? Math.max(128 * 2 ** 20, 0.25 * settled) : 1024 * 2 ** 20;
      assert(
        late - settled <= allowed,
        `resident memory grew from ${mib(settled)} to ${mib(late)} MiB over the fuzzing (allowed ${
          mib(allowed)
        })`,
      );
      if (collected) {
        const kept = Math.max(...heap.slice(2)) - Math.max(heap[0], heap[1]);
        assert(kept <= 32 * 2 ** 20, `the JavaScript heap kept ${mib(kept)} MiB more over the fuzzing`);
      } else console.log("  (no --expose-gc: the loose memory bound)");
      assertEquals(after, before, "the same requests give the same image and latent after the fuzzing");
      assertEquals((await fetch(`${url}/health`)).status, 200);
      assertEquals(({} as any).polluted, undefined, "no prototype pollution");
    });
  } finally {
    await Deno.remove(cache, { recursive: true });
  }
});

Deno.test("robustness: soak of mixed routes with adapter churn and disconnecting clients: zero 5xx, left work cancelled, others unaffected, memory levels off", async () => {
  const TOTAL = 240, CLIENTS = 8, ADAPTERS = 6;
  const rand = random(777);
  const hub = new FakeHub();
  const cache = await Deno.makeTempDir();
  const targets = findLoraTargets(await Deno.readFile(`${MODEL_DIR}/unet/model.onnx`));
  let adapterBytes = 0;
  for (let i = 0; i < ADAPTERS; i++) {
    const file = randomAdapter(targets, { seed: 500 + 7 * i, rank: 4, format: "legacy-attention-processor" });
    adapterBytes = file.length;
    await hub.addCommit(`soak/adapter-${i}`, { "lora.safetensors": file });
  }
  const server = await spawnMain({
    HF_ENDPOINT: hub.url,
    HF_HUB_CACHE: `${cache}/hub`,
    CACHE_DIR: `${cache}/server`,
    LORA_BUNDLED_CACHE: "",
    // Room for two adapters in memory: the six churn through the LRU and back from disk.
    LORA_CACHE_BYTES: String(Math.floor(2.5 * adapterBytes)),
    MAX_CONCURRENT_REQUESTS: "64",
    MAX_STEPS: "1000",
  });
  const { url } = server;
  try {
    const image = (await png(64, 64)).toBase64();
    const steady = { prompt: "a small red square on a white background", seed: 7, steps: 4 };
    const alone = await (await post(`${url}/generate`, steady)).json();
    const statuses = new Map<string, number>();
    const failures: string[] = [];
    const memory: [number, number][] = [];
    let disconnects = 0, steadyChecks = 0, worstSteadyDiff = 0, done = 0;
    const lora = () =>
      rand() < 0.25 ? undefined : [{ repo: `soak/adapter-${Math.floor(rand() * ADAPTERS)}` }];
    const requestShapes: Record<string, [string, Record<string, unknown>]> = {
      "/invert": ["/invert", { image, prompt: "a", steps: 3 }],
      "/edit": ["/edit", { image, source_prompt: "a", target_prompt: "b", steps: 3 }],
      "/interpolate": ["/interpolate", {
        from: { prompt: "a", seed: 1 },
        to: { prompt: "b", seed: 2 },
        frames: 3,
        steps: 3,
      }],
    };
    const withLora = ([path, body]: [string, Record<string, unknown>]): [string, Record<string, unknown>] => [
      path,
      { ...body, lora: lora() },
    ];
    const requestFor = (): [string, Record<string, unknown>] | "disconnect" | "steady" => {
      const r = rand();
      if (r < 0.3) {
        return ["/generate", {
          prompt: "a large blue circle",
          seed: Math.floor(rand() * 1e6),
          steps: 3 + Math.floor(rand() * 4),
          lora: lora(),
        }];
      }
      if (r < 0.45) return withLora(requestShapes["/invert"]);
      if (r < 0.6) return withLora(requestShapes["/edit"]);
      if (r < 0.75) return withLora(requestShapes["/interpolate"]);
      if (r < 0.9) return "disconnect";
      return "steady";
    };
    // The UNet rows each kind of finished request costs, measured alone; the rest of the soak's rows are
    // what the leaving clients' generations ran.
    const rowsAlone = new Map<string, number>();
    const kindOf = (path: string, body: Record<string, unknown>) => `${path} ${body.steps}`;
    const generateShapes = [3, 4, 5, 6].map((steps): [string, Record<string, unknown>] => [
      "/generate",
      { prompt: "a", steps },
    ]);
    for (const [path, body] of [...generateShapes, ...Object.values(requestShapes)]) {
      const before = await metricValue(url, "sd_unet_batch_rows_sum");
      assertEquals((await post(`${url}${path}`, body)).status, 200);
      rowsAlone.set(kindOf(path, body), (await metricValue(url, "sd_unet_batch_rows_sum")) - before);
    }
    const rowsAtStart = await metricValue(url, "sd_unet_batch_rows_sum");
    let finishedRows = 0;
    const one = async () => {
      const kind = requestFor();
      if (kind === "disconnect") {
        // A client that leaves a 1000-step generation: a streamed one after its first progress event, or a
        // plain JSON one 200 ms after sending it.
        const controller = new AbortController();
        const body = { prompt: "a", steps: 1000, lora: lora() };
        if (disconnects++ % 2 === 0) {
          const res = await post(`${url}/generate`, body, { accept: "text/event-stream" }, controller.signal);
          const reader = res.body!.getReader();
          await reader.read();
          controller.abort();
          await reader.cancel().catch(() => {});
        } else {
          const pending = post(`${url}/generate`, body, {}, controller.signal);
          await new Promise((r) => setTimeout(r, 200));
          controller.abort();
          await pending.catch(() => {});
        }
        return;
      }
      const [path, body] = kind === "steady" ? ["/generate", steady] : kind;
      const res = await post(`${url}${path}`, body);
      const key = `${path} ${res.status}`;
      statuses.set(key, (statuses.get(key) ?? 0) + 1);
      const json = await res.json();
      if (res.status !== 200) failures.push(`${key}: ${JSON.stringify(json).slice(0, 300)}`);
      else {
        finishedRows += rowsAlone.get(kindOf(path, body))!;
        if (kind === "steady") {
          // Batched with whatever else is in flight, the same request gives the same image up to rounding.
          const [a, b] = await Promise.all([pixels(json.images[0].data), pixels(alone.images[0].data)]);
          worstSteadyDiff = Math.max(worstSteadyDiff, maxAbsDifference(a, b));
          steadyChecks++;
        }
      }
    };
    await Promise.all(Array.from({ length: CLIENTS }, async () => {
      while (done < TOTAL) {
        const n = ++done;
        await one();
        if (n % 40 === 0) memory.push([n, await metricValue(url, "process_memory_usage")]);
      }
    }));
    // Every request, finished or left, is released, and the left ones' work was cancelled: the server goes
    // idle at once, and the left generations ran a few steps each, not their 1000.
    for (let i = 0; i < 20 && await metricValue(url, "sd_requests_in_flight") > 0; i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    const inFlight = await metricValue(url, "sd_requests_in_flight");
    const rows = await metricValue(url, "sd_unet_batch_rows_sum") - rowsAtStart;
    const leftStepsEach = (rows - finishedRows) / 2 / disconnects;
    const adapterLoads = await metricValue(url, "sd_adapter_cache_misses_total");
    const mib = (b: number) => (b / 2 ** 20).toFixed(0);
    const half = memory[Math.floor(memory.length / 2) - 1][1], last = memory[memory.length - 1][1];
    console.log(
      `  ${TOTAL} requests, ${CLIENTS} clients: ${JSON.stringify(Object.fromEntries(statuses))}; ` +
        `${disconnects} disconnects; ${steadyChecks} repeats of one request, max pixel difference ${worstSteadyDiff}; ` +
        `UNet rows ${rows}, of which left generations ${rows - finishedRows} (${
          leftStepsEach.toFixed(1)
        } guided steps each); adapter loads ${adapterLoads}; RSS MiB after ${
          memory.sort((a, b) => a[0] - b[0]).map(([n, b]) => `${n}: ${mib(b)}`).join(", ")
        }`,
    );
    assertEquals(failures, [], failures.join("\n"));
    assertEquals(inFlight, 0, "requests still in flight after every client finished or left");
    assert(
      rows >= finishedRows,
      `fewer UNet rows (${rows}) than the finished requests cost alone (${finishedRows})`,
    );
    assert(
      leftStepsEach <= 25,
      `left generations ran ${leftStepsEach.toFixed(1)} of their 1000 steps on average`,
    );
    assert(disconnects > 0 && steadyChecks > 0, "the seeded mix has both disconnects and repeats");
    assert(
      worstSteadyDiff <= 3,
      `a request batched with others differs from itself alone by ${worstSteadyDiff} levels`,
    );
    assert(
      last - half <= Math.max(48 * 2 ** 20, 0.1 * half),
      `resident memory still growing over the second half: ${mib(half)} -> ${mib(last)} MiB`,
    );
  } finally {
    await server.stop();
    await hub.close();
    await Deno.remove(cache, { recursive: true });
  }
});
