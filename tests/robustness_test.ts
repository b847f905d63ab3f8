/**
 * Robustness: seeded random and malformed requests against every route, clients that disconnect
 * mid-generation, and a soak of mixed routes with adapter churn. The seeds are fixed, so a failure
 * reproduces; each test prints what it sent and measured.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import sharp from "sharp";
import { MODEL_DIR, pixels, post, spawnMain, withServer } from "./helpers.ts";
import { forEachConcurrently } from "../pipeline/concurrency.ts";
import { FakeHub } from "./hub_server.ts";
import { findLoraTargets } from "../loras/graph_rewrite.ts";
import { randomAdapter } from "../tools/random_adapter.ts";
import { uint32Stream } from "../pipeline/rng.ts";
import { maxAbsDifference } from "../tools/parity.ts";
import { encodeBase64 } from "../routes/base64.ts";

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

/** Image payloads a careless or hostile client might send: each is base64 (or a data URL). */
async function hostileImages(rand: () => number): Promise<string[]> {
  const valid = await png(64, 64);
  const truncated = valid.slice(0, Math.floor(valid.length * (0.2 + 0.6 * rand())));
  const flipped = valid.slice();
  for (let i = 0; i < 40; i++) flipped[16 + Math.floor(rand() * (flipped.length - 16))] ^= 0xff;
  const noise = Uint8Array.from({ length: 2000 }, () => Math.floor(rand() * 256));
  // A PNG whose header claims 100000 x 100000 pixels (a decompression bomb's first bytes).
  const bomb = valid.slice(0, 33);
  new DataView(bomb.buffer).setUint32(16, 100_000);
  new DataView(bomb.buffer).setUint32(20, 100_000);
  return [
    encodeBase64(truncated),
    encodeBase64(flipped),
    encodeBase64(noise),
    encodeBase64(bomb),
    encodeBase64(new Uint8Array(0)),
    `data:image/png;base64,${encodeBase64(noise)}`,
    `data:text/html;base64,${encodeBase64(valid)}`,
    "data:image/png;base64,",
    "=".repeat(64),
    encodeBase64(await png(1, 1)),
    encodeBase64(await png(600, 8)),
  ];
}

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
    () => 2 ** 53 + 1,
    () => Number.MAX_SAFE_INTEGER,
    () => "",
    () => "x".repeat(5000),
    () => "\u0000\ud800",
    () => "NaN",
    () => "-1",
    () => [],
    () => [1, "a", null],
    () => ({}),
    () => ({ __proto__: { polluted: true } }),
    () => ({ constructor: { prototype: { polluted: true } } }),
    () => pick(rand, images),
    () => ({ repo: "../../etc/passwd" }),
    () => [{ repo: "org/name", scale: 1e9 }],
    () => ({ shape: [1, 4, 100000, 100000], dtype: "float32", data: "AAAA" }),
    () => ({ shape: [1, 4, 8, 8], dtype: "float32", data: encodeBase64(new Uint8Array(12)) }),
  ])();
}

interface RouteCase {
  path: string;
  valid: (images: string[]) => Record<string, unknown>;
}

const ROUTES: RouteCase[] = [
  { path: "/generate", valid: () => ({ prompt: "a red circle", steps: 2, seed: 1 }) },
  { path: "/invert", valid: (images) => ({ image: images[9], prompt: "a", steps: 2 }) },
  {
    path: "/edit",
    valid: (images) => ({ image: images[9], source_prompt: "a", target_prompt: "b", steps: 2 }),
  },
  {
    path: "/interpolate",
    valid: () => ({ from: { prompt: "a", seed: 1 }, to: { prompt: "b", seed: 2 }, steps: 2, frames: 2 }),
  },
];

/** One mutation of a valid body: a field dropped, retyped, nested or added, or the whole body replaced. */
function mutate(rand: () => number, body: Record<string, unknown>, images: string[]): unknown {
  const keys = Object.keys(body);
  const copy: Record<string, unknown> = structuredClone(body);
  const mutations = 1 + Math.floor(rand() * 3);
  for (let m = 0; m < mutations; m++) {
    const kind = rand();
    const key = pick(rand, keys);
    if (kind < 0.2) delete copy[key];
    else if (kind < 0.6) copy[key] = hostileValue(rand, images);
    else if (kind < 0.7) copy[key] = { nested: copy[key] };
    else if (kind < 0.8) {
      copy[pick(rand, ["lora", "image", "latent", "width", "height", "frames", "steps"])] = hostileValue(
        rand,
        images,
      );
    } else if (kind < 0.9) copy[`unknown_${m}`] = hostileValue(rand, images);
    else return hostileValue(rand, images);
  }
  return copy;
}

/** Bodies that are not JSON objects at all, sent raw. */
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
];

function isErrorShape(json: any): boolean {
  return typeof json?.error?.code === "string" && typeof json?.error?.message === "string";
}

Deno.test("robustness: seeded random and malformed bodies and image bytes on every route give 4xx in one shape, never 5xx; the server keeps serving", async () => {
  const seed = 20261127;
  const rand = random(seed);
  const images = await hostileImages(rand);
  await withServer({ MAX_STEPS: "20", MAX_FRAMES: "4", MAX_PIXELS: String(128 * 128) }, async ({ url }) => {
    const reference = await (await post(`${url}/generate`, { prompt: "a red circle", steps: 2, seed: 1 }))
      .json();
    const statuses = new Map<number, number>();
    const failures: string[] = [];
    const send = async (path: string, body: string, contentType = "application/json") => {
      const res = await fetch(`${url}${path}`, {
        method: "POST",
        headers: { "content-type": contentType },
        body,
      });
      const text = await res.text();
      statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
      let json: unknown;
      try {
        json = JSON.parse(text);
      } catch { /* checked below */ }
      if (res.status >= 500 || (res.status >= 400 && !isErrorShape(json))) {
        failures.push(`${path} ${res.status} ${body.slice(0, 200)} -> ${text.slice(0, 300)}`);
      }
    };
    const jobs: (() => Promise<void>)[] = [];
    for (const route of ROUTES) {
      for (let i = 0; i < 40; i++) {
        const body = JSON.stringify(mutate(rand, route.valid(images), images));
        jobs.push(() => send(route.path, body));
      }
      for (const image of images) {
        for (const field of route.path === "/interpolate" ? ["from"] : ["image"]) {
          const body = route.path === "/interpolate"
            ? { ...route.valid(images), [field]: { prompt: "a", image } }
            : { ...route.valid(images), [field]: image };
          jobs.push(() => send(route.path, JSON.stringify(body)));
        }
      }
      for (const raw of RAW_BODIES) jobs.push(() => send(route.path, raw));
      jobs.push(() => send(route.path, JSON.stringify(route.valid(images)), "text/plain"));
    }
    // Four clients at a time, so malformed requests also arrive while valid ones are generating.
    await forEachConcurrently(jobs.length, 4, (i) => jobs[i]());
    console.log(
      `  seed ${seed}: ${jobs.length} requests; statuses ${JSON.stringify(Object.fromEntries(statuses))}`,
    );
    assertEquals(failures, [], failures.join("\n"));
    assert([...statuses.keys()].some((s) => s === 200), "some mutations stay valid and must succeed");
    assertEquals((await fetch(`${url}/health`)).status, 200);
    const after = await (await post(`${url}/generate`, { prompt: "a red circle", steps: 2, seed: 1 })).json();
    assertEquals(
      after.images[0].data,
      reference.images[0].data,
      "the same request after the fuzzing gives the same image",
    );
    assertEquals(({} as any).polluted, undefined, "no prototype pollution");
  });
});

async function metricValue(url: string, name: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  if (!line) throw new Error(`/metrics has no ${name}`);
  return Number(line.split(" ")[1]);
}

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
    const image = encodeBase64(await png(64, 64));
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
        if (n % 40 === 0) memory.push([n, await metricValue(url, "process_resident_memory_bytes")]);
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
