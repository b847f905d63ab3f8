/**
 * GPU benchmark (issue 12, item 5): the SD-1.5-scale UNet on ONNX Runtime's WebGPU provider against the
 * same architecture in PyTorch on the same GPU, and the served /generate throughput, in one run that
 * keeps to a time budget. Made for a lent NVIDIA machine with no network (bench/gpu/run.sh there);
 * runs anywhere the provider loads (lavapipe at reduced scale, for the tests).
 *
 *   deno task bench:gpu [--size full|mini] [--resolution 512] [--rows 2,8,16,32] [--variants fp16,fp32]
 *     [--provider webgpu] [--levels 1,8,16] [--steps 20] [--budget-s 420] [--out DIR]
 *     [--runs 5] [--warmup 2] [--serve-variant fp16] [--requests-per-client 2]
 *     [--torch eager,compile|none] [--torch-device auto|cpu] [--plain on|off]
 *
 * In order, while the budget lasts (what it cuts is listed in the results, never overrun):
 *  1. the models (support/make_sd15.ts, cached) and their LoRA-rewritten UNet graphs (loras/graph_cache.ts),
 *     while PyTorch eager runs on the GPU (training/torch_unet_bench.py; ONNX export is CPU work);
 *  2. ms per UNet `session.run` of the served UNet session (engine/load.ts loadServing: the LoRA graph, zero
 *     adapters as loras/pack.ts packs them, feeds converted at the session's edge) for each variant and
 *     row count: warm-up runs excluded, median of `runs`;
 *  3. served POST /generate images/s, main.ts in a child process (MODEL, EXECUTION_PROVIDER), batching on
 *     and off, closed-loop clients at each level (bench/clients.ts), with the raw ceiling from 2.;
 *  4. the plain exported UNet graph (no LoRA inputs), then torch.compile.
 * Results: DIR/gpu_bench.json, DIR/gpu_bench.md, DIR/gpu_bench.log (children's output, server logs).
 */
import * as ort from "onnxruntime-node";
import { parseArgs } from "node:util";
import { join } from "node:path";
import { closedLoop, type LevelResult } from "./clients.ts";
import { median } from "./stats.ts";
import { loadConfig } from "../config.ts";
import { makeSd15, type Sd15Info, type Sd15Size, type Sd15Variant } from "../support/make_sd15.ts";
import { PYTHON, pythonReady } from "../support/python.ts";
import { type MainProcess, spawnMain } from "../support/main_process.ts";
import { loraGraph } from "../loras/graph_cache.ts";
import { packLoraFeeds } from "../loras/pack.ts";
import { type Feeds, fromOutputs, inputSpecs, toInputs } from "../pipeline/session_io.ts";
import { gaussianNoise } from "../pipeline/rng.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const list = (text: string) => text.split(",").map((s) => s.trim()).filter(Boolean);
const numbers = (text: string) => list(text).map(Number);

const { values } = parseArgs({
  args: Deno.args,
  options: {
    size: { type: "string", default: "full" },
    resolution: { type: "string", default: "512" },
    rows: { type: "string", default: "2,8,16,32" },
    variants: { type: "string", default: "fp16,fp32" },
    provider: { type: "string", default: "webgpu" },
    levels: { type: "string", default: "1,8,16" },
    steps: { type: "string", default: "20" },
    "budget-s": { type: "string", default: "420" },
    out: { type: "string", default: Deno.env.get("OUT") ?? "gpu_bench_out" },
    runs: { type: "string", default: "5" },
    warmup: { type: "string", default: "2" },
    "serve-variant": { type: "string", default: "fp16" },
    "requests-per-client": { type: "string", default: "2" },
    torch: { type: "string", default: "eager,compile" },
    plain: { type: "string", default: "on" },
    // auto: CUDA or a note saying why not; cpu: the reference on the CPU in float32 (tests)
    "torch-device": { type: "string", default: "auto" },
    // internal: one child process measuring one UNet graph
    child: { type: "string" },
    model: { type: "string" },
    graph: { type: "string" },
    "deadline-ms": { type: "string" },
  },
});
const size = values.size as Sd15Size;
const resolution = Number(values.resolution);
const latent = resolution / 8;
const rowsList = numbers(values.rows!);
const provider = values.provider!;
const runs = Number(values.runs);
const warmup = Math.max(1, Number(values.warmup));

/** One line of a child's output that the parent reads. */
function emit(record: Record<string, unknown>) {
  console.log(JSON.stringify(record));
}

// ------------------------------------------------------------------ child: one UNet graph
/**
 * ms per `session.run` at each row count. `lora`: the UNet session the server itself opens (the
 * LoRA-rewritten graph), fed zero rank-1 LoRA inputs; `plain`: the exported graph.
 */
async function unetChild(modelDir: string, graph: "lora" | "plain", deadline: number) {
  const started = performance.now();
  let session: ort.InferenceSession;
  let targets: Parameters<typeof packLoraFeeds>[0] = [];
  let hidden: number;
  let release: () => Promise<void>;
  if (graph === "lora") {
    const { loadServing } = await import("../engine/load.ts");
    const config = loadConfig({ ...Deno.env.toObject(), MODEL: modelDir, EXECUTION_PROVIDER: provider });
    const { model } = await loadServing(config);
    session = model.sessions.unet;
    targets = model.loraTargets;
    hidden = model.info.hiddenSize;
    release = () => model.release();
  } else {
    // The served session options for the graph the export wrote (no LoRA inputs).
    session = await ort.InferenceSession.create(join(modelDir, "unet/model.onnx"), {
      executionProviders: [provider],
      graphOptimizationLevel: "all",
      enableCpuMemArena: false,
    });
    const meta = session.inputMetadata.find((m) => m.name === "encoder_hidden_states");
    hidden = meta?.isTensor && typeof meta.shape[2] === "number" ? meta.shape[2] : 768;
    release = () => session.release();
  }
  emit({ type: "session", seconds: (performance.now() - started) / 1000, inputs: session.inputNames.length });
  const specs = inputSpecs(session);
  let lastMsPerRow = 0;
  for (const rows of rowsList) {
    const left = deadline - Date.now();
    const estimate = lastMsPerRow * rows * (runs + warmup + 1);
    if (left <= 0 || estimate > left) {
      emit({ type: "skipped", rows, reason: `time budget: ${(left / 1000).toFixed(0)} s left` });
      continue;
    }
    try {
      const pipelineFeeds: Feeds = {
        sample: new ort.Tensor("float32", gaussianNoise(1, rows * 4 * latent * latent), [
          rows,
          4,
          latent,
          latent,
        ]),
        timestep: new ort.Tensor("float32", new Float32Array(rows).fill(500), [rows]),
        encoder_hidden_states: new ort.Tensor("float32", gaussianNoise(2, rows * 77 * hidden), [
          rows,
          77,
          hidden,
        ]),
        ...(graph === "lora" ? packLoraFeeds(targets, new Array(rows).fill([])) : {}),
      };
      const t0 = performance.now();
      const feeds = toInputs(pipelineFeeds, specs);
      const convertMs = performance.now() - t0;
      const t1 = performance.now();
      const first = fromOutputs(await session.run(feeds) as Feeds);
      const firstMs = performance.now() - t1;
      const out = Object.values(first)[0].data as Float32Array;
      const finite = out.every(Number.isFinite);
      for (let i = 1; i < warmup; i++) await session.run(feeds);
      const times: number[] = [];
      for (let i = 0; i < runs; i++) {
        const t = performance.now();
        await session.run(feeds);
        times.push(performance.now() - t);
      }
      const ms = median(times);
      lastMsPerRow = ms / rows;
      emit({
        type: "result",
        rows,
        ms_median: ms,
        ms_min: Math.min(...times),
        ms: times.map((t) => Math.round(t * 1000) / 1000),
        first_run_ms: firstMs,
        convert_ms: convertMs,
        finite,
      });
    } catch (error) {
      emit({ type: "error", rows, error: String((error as Error).message ?? error).slice(0, 500) });
    }
  }
  await release();
}

if (values.child === "unet") {
  await unetChild(values.model!, values.graph as "lora" | "plain", Number(values["deadline-ms"]));
  Deno.exit(0);
}

// ------------------------------------------------------------------ parent
const started = Date.now();
const budgetS = Number(values["budget-s"]);
const deadline = started + budgetS * 1000;
const secondsLeft = () => (deadline - Date.now()) / 1000;
const outDir = values.out!;
await Deno.mkdir(outDir, { recursive: true });
const logPath = join(outDir, "gpu_bench.log");
await Deno.writeTextFile(logPath, "");
const log = async (text: string) => {
  await Deno.writeTextFile(logPath, text.endsWith("\n") ? text : `${text}\n`, { append: true });
};
const say = async (text: string) => {
  console.error(`[gpu_bench ${((Date.now() - started) / 1000).toFixed(0)} s] ${text}`);
  await log(`# ${text}`);
};

/** Minimum time left, by phase, to start it at all (full size; mini needs a fraction). */
const scale = size === "full" ? 1 : 0.1;
const MIN_S = { raw: 30 * scale, serve: 60 * scale, plain: 25 * scale, compile: 120 * scale };

interface UnetPoint {
  variant: string;
  graph: "lora" | "plain";
  rows: number;
  ms_median?: number;
  ms_min?: number;
  ms?: number[];
  first_run_ms?: number;
  convert_ms?: number;
  finite?: boolean;
  error?: string;
  skipped?: string;
}
interface ServeLevel {
  concurrency: number;
  requests: number;
  batched?: LevelResult;
  unbatched?: LevelResult;
  ceiling?: { rows: number; imagesPerSecond: number };
  error?: string;
}

const variants = list(values.variants!) as Sd15Variant[];
const serveVariant = values["serve-variant"] as Sd15Variant;
const torchModes = values.torch === "none" ? [] : list(values.torch!);
const results = {
  started: new Date(started).toISOString(),
  finished: "",
  seconds: 0,
  budget_s: budgetS,
  options: {
    size,
    resolution,
    latent,
    rows: rowsList,
    variants,
    provider,
    levels: numbers(values.levels!),
    steps: Number(values.steps),
    runs,
    warmup,
    serve_variant: serveVariant,
  },
  environment: {} as Record<string, unknown>,
  models: {} as Record<
    string,
    { dir: string; made: boolean; seconds: number; info: Sd15Info } | { error: string }
  >,
  lora_graphs: {} as Record<string, { seconds: number; targets: number } | { error: string }>,
  unet: [] as UnetPoint[],
  unet_sessions: {} as Record<string, { seconds: number } | { error: string }>,
  torch: { env: undefined as unknown, setup: undefined as unknown, points: [] as Record<string, unknown>[] },
  serve: {
    variant: serveVariant,
    image_encoder: "",
    batch_max_rows: undefined as number | undefined,
    levels: [] as ServeLevel[],
    startup_s: {} as Record<string, number>,
  },
  cut: [] as string[],
  notes: [] as string[],
};

async function commandText(cmd: string, args: string[]): Promise<string | undefined> {
  try {
    const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "null" }).output();
    return out.success ? new TextDecoder().decode(out.stdout).trim() : undefined;
  } catch {
    return undefined;
  }
}

/** The Vulkan adapter as Deno's own WebGPU (wgpu) sees it: which device, and its buffer limits. */
async function adapterInfo(): Promise<unknown> {
  const code = `const a = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
console.log(JSON.stringify(a ? { description: a.info.description, vendor: a.info.vendor,
  maxBufferSize: a.limits.maxBufferSize, maxStorageBufferBindingSize: a.limits.maxStorageBufferBindingSize,
  shaderF16: a.features.has("shader-f16") } : null));`;
  const text = await commandText(Deno.execPath(), ["eval", "--unstable-webgpu", code]);
  try {
    return text ? JSON.parse(text.split("\n").at(-1)!) : undefined;
  } catch {
    return text;
  }
}

async function imageEncoder(): Promise<string> {
  try {
    const pkg = JSON.parse(await Deno.readTextFile(join(ROOT, "node_modules/sharp/package.json")));
    return pkg.smoothDiffusionStandIn
      ? `stand-in for sharp (${pkg.smoothDiffusionStandIn})`
      : `sharp ${pkg.version} (libvips)`;
  } catch {
    return "unknown";
  }
}

/**
 * A child process whose stdout lines are JSON records (others go to the log), killed at the
 * deadline. Resolves with its exit code, or "killed".
 */
async function runChild(
  label: string,
  cmd: string,
  args: string[],
  onRecord: (record: Record<string, any>) => void,
  options: { cwd?: string; env?: Record<string, string> } = {},
): Promise<number | "killed"> {
  const child = new Deno.Command(cmd, {
    args,
    cwd: options.cwd ?? ROOT,
    env: options.env,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let killed = false;
  const timer = setTimeout(() => {
    killed = true;
    try {
      child.kill("SIGKILL");
    } catch { /* gone */ }
  }, Math.max(0, deadline - Date.now()));
  const pump = async (stream: ReadableStream<Uint8Array>, isStdout: boolean) => {
    let buffered = "";
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      buffered += chunk;
      let newline;
      while ((newline = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        await log(`[${label}] ${line}`);
        if (isStdout && line.startsWith("{")) {
          try {
            onRecord(JSON.parse(line));
          } catch { /* not a record */ }
        }
      }
    }
    if (buffered) await log(`[${label}] ${buffered}`);
  };
  await Promise.all([pump(child.stdout, true), pump(child.stderr, false)]);
  const status = await child.status;
  clearTimeout(timer);
  return killed ? "killed" : status.code;
}

async function torchRun(modes: string[]): Promise<void> {
  if (!pythonReady) {
    results.torch.points.push({ type: "skipped", reason: `no Python with torch at ${PYTHON}` });
    return;
  }
  const code = await runChild(
    `torch ${modes.join(",")}`,
    PYTHON,
    [
      join(ROOT, "training/torch_unet_bench.py"),
      `--size=${size}`,
      `--resolution=${resolution}`,
      `--rows=${rowsList.join(",")}`,
      `--modes=${modes.join(",")}`,
      `--runs=${runs}`,
      `--warmup=${warmup}`,
      `--device=${values["torch-device"]}`,
      `--budget-s=${Math.max(1, secondsLeft() - 5).toFixed(0)}`,
      // what compiling needs once the model is built (about 15 s at full size)
      `--compile-min-s=${(MIN_S.compile * 0.6).toFixed(0)}`,
    ],
    (r) => {
      if (r.type === "env") results.torch.env = r;
      else if (r.type === "setup") results.torch.setup = r;
      else results.torch.points.push(r);
    },
    { cwd: join(ROOT, "training"), env: { PYTHONUNBUFFERED: "1" } },
  );
  if (code === "killed") results.cut.push(`PyTorch ${modes.join(", ")}: stopped at the time budget`);
  else if (code !== 0) results.torch.points.push({ type: "error", modes, error: `exit code ${code}` });
}

async function unetRun(variant: string, graph: "lora" | "plain"): Promise<void> {
  const model = results.models[variant];
  if (!model || "error" in model) return;
  const label = `${variant} ${graph}`;
  const points = new Map<number, UnetPoint>();
  const code = await runChild(
    `unet ${label}`,
    Deno.execPath(),
    [
      "run",
      "-A",
      import.meta.filename!,
      "--child=unet",
      `--model=${model.dir}`,
      `--graph=${graph}`,
      `--deadline-ms=${deadline}`,
      `--resolution=${resolution}`,
      `--rows=${rowsList.join(",")}`,
      `--provider=${provider}`,
      `--runs=${runs}`,
      `--warmup=${warmup}`,
    ],
    (r) => {
      if (r.type === "session") results.unet_sessions[label] = { seconds: r.seconds };
      else if (r.rows !== undefined) {
        const { type, reason, ...rest } = r;
        points.set(r.rows, {
          variant,
          graph,
          ...rest,
          ...(type === "skipped" ? { skipped: reason } : {}),
        } as UnetPoint);
      }
    },
  );
  for (const rows of rowsList) {
    const point = points.get(rows) ??
      {
        variant,
        graph,
        rows,
        skipped: code === "killed" ? "stopped at the time budget" : `not measured (child exited ${code})`,
      };
    results.unet.push(point);
  }
  const skipped = [...points.values()].filter((p) => p.skipped).map((p) => p.rows);
  if (code === "killed") results.cut.push(`UNet ${label}: stopped at the time budget`);
  else if (skipped.length) results.cut.push(`UNet ${label} at ${skipped.join(", ")} rows: time budget`);
  else if (code !== 0 && !results.unet_sessions[label]) {
    results.unet_sessions[label] = { error: `child exited ${code} before its session opened (see the log)` };
  }
}

/**
 * Seconds a served level should take by the raw runs (batched and unbatched, warm-ups included, the
 * VAE and the rest guessed at a fifth more): 0 where nothing was measured to tell.
 */
function levelSeconds(level: number, requests: number, steps: number): number {
  const measured = results.unet.filter((p) =>
    p.variant === serveVariant && p.graph === "lora" && p.ms_median
  );
  if (!measured.length) return 0;
  const cap = results.serve.batch_max_rows ?? Infinity;
  const msAt = (rows: number) => {
    const near = measured.reduce((a, b) => Math.abs(b.rows - rows) < Math.abs(a.rows - rows) ? b : a);
    return near.ms_median! * rows / near.rows;
  };
  const batchRows = Math.min(2 * level, cap);
  const batched = Math.ceil(requests / level) * Math.ceil((2 * level) / batchRows) * msAt(batchRows);
  const unbatched = (requests / level) * level * msAt(2);
  const warm = (2 / steps) * (batched + unbatched) * (level / requests);
  return 1.2 * (steps * (batched + unbatched) + steps * warm) / 1000;
}

function rawPoint(variant: string, rows: number): UnetPoint | undefined {
  return results.unet.find((p) =>
    p.variant === variant && p.graph === "lora" && p.rows === rows &&
    p.ms_median !== undefined
  );
}

async function serveRun(): Promise<void> {
  const model = results.models[serveVariant];
  if (!model || "error" in model) {
    results.cut.push(`served /generate: no ${serveVariant} model`);
    return;
  }
  results.serve.image_encoder = await imageEncoder();
  // Rows the provider could not run (a buffer over the device's limit, say) would fail requests:
  // batches are capped at the largest row count that ran.
  const failed = results.unet.filter((p) =>
    p.variant === serveVariant && p.graph === "lora" && p.ms_median === undefined
  );
  const ran = rowsList.filter((r) => rawPoint(serveVariant, r));
  const env: Record<string, string> = {
    MODEL: model.dir,
    EXECUTION_PROVIDER: provider,
    MAX_CONCURRENT_REQUESTS: "256",
    REQUEST_TIMEOUT_MS: "3600000",
  };
  if (failed.length && ran.length) {
    env.BATCH_MAX_ROWS = String(Math.max(...ran));
    results.serve.batch_max_rows = Number(env.BATCH_MAX_ROWS);
    results.notes.push(
      `served batches capped at BATCH_MAX_ROWS=${env.BATCH_MAX_ROWS}: the raw ${serveVariant} UNet did not run ` +
        `at ${failed.map((p) => p.rows).join(", ")} rows`,
    );
  }
  const steps = Number(values.steps);
  const body = (stepsOf: number) => (i: number) => ({
    prompt: "a large red circle on a blue background",
    seed: i,
    steps: stepsOf,
    width: resolution,
    height: resolution,
  });
  const t0 = Date.now();
  const servers: Partial<Record<"batched" | "unbatched", MainProcess>> = {};
  const start = async (key: "batched" | "unbatched") => {
    const t = Date.now();
    servers[key] = await spawnMain({ ...env, BATCHING: key === "batched" ? "on" : "off" }, { stderr: true });
    results.serve.startup_s[key] = (Date.now() - t) / 1000;
  };
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), Math.max(0, deadline - Date.now()));
  try {
    // Both servers at once: their start-up (sessions, the provider's check) overlaps.
    await Promise.all([start("batched"), start("unbatched")]);
    await say(`servers up in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    const levels = numbers(values.levels!);
    for (const [index, level] of levels.entries()) {
      // Fewer requests per client where the raw runs say the asked-for number would not fit the
      // time left (shared with the levels still to come), none where even one each would not.
      let perClient = Number(values["requests-per-client"]);
      const share = secondsLeft() / (levels.length - index);
      const cost = (n: number) => levelSeconds(level, n * level, steps);
      while (perClient > 1 && cost(perClient) > share) perClient--;
      const requests = level * perClient;
      const entry: ServeLevel = { concurrency: level, requests };
      results.serve.levels.push(entry);
      if (secondsLeft() < MIN_S.serve / 4 || cost(1) > secondsLeft()) {
        entry.error = `not run: about ${cost(1).toFixed(0)} s needed, ${secondsLeft().toFixed(0)} s left`;
        results.cut.push(`served /generate at concurrency ${level}: time budget`);
        continue;
      }
      if (perClient < Number(values["requests-per-client"])) {
        results.notes.push(
          `served concurrency ${level}: ${perClient} request(s) per client to fit the budget`,
        );
      }
      try {
        // Warm-up at the same concurrency with few steps: the batch shapes this level forms.
        await closedLoop(servers.batched!.url, level, level, body(2), abort.signal);
        await closedLoop(servers.unbatched!.url, level, level, body(2), abort.signal);
        entry.batched = await closedLoop(servers.batched!.url, level, requests, body(steps), abort.signal);
        entry.unbatched = await closedLoop(
          servers.unbatched!.url,
          level,
          requests,
          body(steps),
          abort.signal,
        );
      } catch (error) {
        entry.error = abort.signal.aborted ? "stopped at the time budget" : String((error as Error).message);
        if (abort.signal.aborted) results.cut.push(`served /generate at concurrency ${level}: time budget`);
      }
      const ceilingRows = Math.max(0, ...rowsList.filter((r) => r <= 2 * level && rawPoint(serveVariant, r)));
      const raw = rawPoint(serveVariant, ceilingRows);
      if (raw) {
        entry.ceiling = {
          rows: ceilingRows,
          imagesPerSecond: ceilingRows / (raw.ms_median! / 1000) / (2 * steps),
        };
      }
      await say(`served level ${level}: ${JSON.stringify(entry)}`);
    }
  } catch (error) {
    results.serve.levels.push({ concurrency: 0, requests: 0, error: `start: ${(error as Error).message}` });
  } finally {
    clearTimeout(timer);
    for (const [key, server] of Object.entries(servers)) {
      await server.stop();
      await log(`[server ${key}] ${server.stderr()}`);
    }
  }
}

// ------------------------------------------------------------------ report
const fmt = (v: number | undefined, digits = 1) => v === undefined ? "-" : v.toFixed(digits);
const short = (text: string) => text.replace(/\s+/g, " ").slice(0, 60);

function unetCell(variant: string, graph: "lora" | "plain", rows: number): string {
  const p = results.unet.find((x) => x.variant === variant && x.graph === graph && x.rows === rows);
  if (!p) return "-";
  if (p.ms_median !== undefined) return `${fmt(p.ms_median)}${p.finite === false ? " (non-finite!)" : ""}`;
  return p.error ? `failed: ${short(p.error)}` : `cut`;
}

function torchCell(mode: string, attention: string, rows: number): string | undefined {
  const p = results.torch.points.find((x) => x.mode === mode && x.attention === attention && x.rows === rows);
  if (!p) return undefined;
  if (p.type === "result") return fmt(p.ms_median as number);
  return p.type === "error" ? `failed${p.oom ? " (out of memory)" : ""}` : "cut";
}

function markdown(): string {
  const env = results.environment as Record<string, any>;
  const torchEnv = results.torch.env as Record<string, any> | undefined;
  const lines: string[] = [];
  const card = env.gpu ?? "no NVIDIA GPU (nvidia-smi absent)";
  lines.push(`# GPU benchmark: ${card}, ${results.started.slice(0, 10)}`, "");
  lines.push(
    `Deno ${env.deno}, onnxruntime-node ${env.onnxruntime} (\`${provider}\`; Vulkan adapter: ${
      env.adapter?.description ?? "unknown"
    }), ` +
      (torchEnv
        ? `torch ${torchEnv.torch}${torchEnv.cuda ? ` (CUDA ${torchEnv.cuda})` : ""}`
        : "torch: not run") +
      `${
        env.driver ? `, NVIDIA driver ${env.driver}` : ""
      }. SD 1.5's architecture (${size}), seeded random ` +
      `weights, ${resolution}x${resolution} (latent ${latent}x${latent}), 77 tokens. ` +
      `Budget ${budgetS} s, used ${results.seconds.toFixed(0)} s.`,
    "",
  );
  const torchCols: [string, string, string][] = [];
  for (const mode of ["eager", "compile"]) {
    for (const attention of ["math", "sdpa"]) {
      if (results.torch.points.some((p) => p.mode === mode && p.attention === attention && p.rows)) {
        torchCols.push([mode, attention, `PyTorch ${torchEnv?.dtype ?? "fp16"} ${mode} (${attention})`]);
      }
    }
  }
  const cols: [string, (rows: number) => string][] = [];
  for (const variant of variants) cols.push([`${variant} LoRA graph`, (r) => unetCell(variant, "lora", r)]);
  for (const variant of variants) {
    if (results.unet.some((p) => p.variant === variant && p.graph === "plain")) {
      cols.push([`${variant} plain graph`, (r) => unetCell(variant, "plain", r)]);
    }
  }
  for (const [mode, attention, title] of torchCols) {
    cols.push([title, (r) => torchCell(mode, attention, r) ?? "-"]);
  }
  // The issue's yardstick: the served fp16 UNet against PyTorch's fastest fp16 forward at the same rows.
  const fastestTorch = (rows: number) => {
    const ms = results.torch.points.filter((p) => p.type === "result" && p.rows === rows)
      .map((p) => p.ms_median as number);
    return ms.length ? Math.min(...ms) : undefined;
  };
  const served = variants.includes("fp16") ? "fp16" : variants[0];
  if (torchCols.length && served) {
    cols.push([`${served} LoRA / fastest PyTorch`, (r) => {
      const ours = rawPoint(served, r)?.ms_median, theirs = fastestTorch(r);
      return ours !== undefined && theirs !== undefined ? `${(ours / theirs).toFixed(2)}x` : "-";
    }]);
  }
  lines.push(
    `UNet, ms per run (${provider} \`session.run\`; PyTorch forward), median of ${runs} after ${warmup} warm-up:`,
    "",
  );
  lines.push(`| rows | ${cols.map((c) => c[0]).join(" | ")} |`, `|---|${cols.map(() => "---").join("|")}|`);
  for (const rows of rowsList) lines.push(`| ${rows} | ${cols.map((c) => c[1](rows)).join(" | ")} |`);
  lines.push("");
  const torchSkip = results.torch.points.find((p) => p.type === "skipped" && !p.rows && p.reason);
  if (torchSkip) lines.push(`PyTorch: ${torchSkip.reason}`, "");
  const check = results.torch.points.find((p) => p.type === "check");
  if (check) lines.push(`PyTorch sdpa against math attention: relative difference ${check.relative}.`, "");

  const steps = Number(values.steps);
  lines.push(
    `Served \`POST /generate\` (${serveVariant}, ${steps} DDIM steps, guidance 7.5, ${resolution}x${resolution}, ` +
      `image encoding: ${results.serve.image_encoder || "-"}${
        results.serve.batch_max_rows ? `, BATCH_MAX_ROWS=${results.serve.batch_max_rows}` : ""
      }); raw ceiling: the UNet's own runs above at up to 2 rows per request:`,
    "",
  );
  lines.push(
    "| concurrency | batched img/s | batched p50 / p95 ms | unbatched img/s | unbatched p50 / p95 ms | raw UNet ceiling img/s (rows) | batched / unbatched | batched / ceiling |",
    "|---|---|---|---|---|---|---|---|",
  );
  for (const l of results.serve.levels) {
    if (l.error && !l.batched) {
      lines.push(`| ${l.concurrency} | ${short(l.error)} | | | | | | |`);
      continue;
    }
    const b = l.batched, u = l.unbatched, c = l.ceiling;
    lines.push(
      `| ${l.concurrency} | ${fmt(b?.imagesPerSecond, 2)} | ${fmt(b?.p50, 0)} / ${fmt(b?.p95, 0)} | ` +
        `${fmt(u?.imagesPerSecond, 2)} | ${fmt(u?.p50, 0)} / ${fmt(u?.p95, 0)} | ` +
        `${c ? `${fmt(c.imagesPerSecond, 2)} (${c.rows})` : "-"} | ` +
        `${b && u ? `${(b.imagesPerSecond / u.imagesPerSecond).toFixed(2)}x` : "-"} | ` +
        `${b && c ? `${(b.imagesPerSecond / c.imagesPerSecond).toFixed(2)}x` : "-"} |`,
    );
  }
  lines.push("");
  const setup: string[] = [];
  for (const [variant, m] of Object.entries(results.models)) {
    setup.push(
      "error" in m
        ? `${variant} model: ${short(m.error)}`
        : `${variant} model ${m.made ? "made" : "cached"} ${fmt(m.seconds)} s`,
    );
  }
  for (const [variant, g] of Object.entries(results.lora_graphs)) {
    setup.push(
      "error" in g ? `${variant} LoRA graph: ${short(g.error)}` : `${variant} LoRA graph ${fmt(g.seconds)} s`,
    );
  }
  for (const [label, s] of Object.entries(results.unet_sessions)) {
    setup.push("error" in s ? `${label}: ${short(s.error)}` : `${label} load ${fmt(s.seconds)} s`);
  }
  for (const [key, s] of Object.entries(results.serve.startup_s)) {
    setup.push(`${key} server start ${fmt(s)} s`);
  }
  lines.push(`Setup: ${setup.join("; ") || "-"}.`, "");
  if (results.cut.length) lines.push(`Cut by the time budget: ${results.cut.join("; ")}.`, "");
  if (results.notes.length) lines.push(`Notes: ${results.notes.join("; ")}.`, "");
  return lines.join("\n");
}

async function writeResults(): Promise<void> {
  results.finished = new Date().toISOString();
  results.seconds = (Date.now() - started) / 1000;
  await Deno.writeTextFile(join(outDir, "gpu_bench.json"), JSON.stringify(results, null, 2) + "\n");
  await Deno.writeTextFile(join(outDir, "gpu_bench.md"), markdown());
}

// ------------------------------------------------------------------ the run
const gpu = await commandText("nvidia-smi", [
  "--query-gpu=name,driver_version,memory.total",
  "--format=csv,noheader",
]);
const [gpuName, driver, memory] = gpu ? gpu.split("\n")[0].split(",").map((s) => s.trim()) : [];
results.environment = {
  gpu: gpuName,
  driver,
  gpu_memory: memory,
  deno: Deno.version.deno,
  onnxruntime: ort.env.versions.node,
  adapter: provider === "webgpu" ? await adapterInfo() : undefined,
  cpus: navigator.hardwareConcurrency,
  python: PYTHON,
};
await say(`environment ${JSON.stringify(results.environment)}`);
await writeResults();
// A step that outlives the budget (making the models, say) must not lose what was measured: at the
// deadline plus a grace the results are written as they stand and the run ends.
Deno.unrefTimer(setTimeout(async () => {
  results.cut.push("the run itself: stopped at the time budget");
  await writeResults();
  console.log(markdown());
  Deno.exit(3);
}, budgetS * 1000 + 15_000));

// 1. Models and LoRA graphs (CPU), with PyTorch eager on the GPU meanwhile.
const prepare = async (variant: Sd15Variant) => {
  const t = Date.now();
  try {
    const made = await makeSd15({ variant, size });
    results.models[variant] = {
      dir: made.dir,
      made: made.made,
      seconds: (Date.now() - t) / 1000,
      info: made.info,
    };
    await say(
      `${variant} model ${made.made ? "made" : "cached"} in ${((Date.now() - t) / 1000).toFixed(1)} s`,
    );
  } catch (error) {
    results.models[variant] = { error: (error as Error).message.slice(0, 2000) };
    await say(`${variant} model failed: ${(error as Error).message}`);
    return;
  }
  const g = Date.now();
  try {
    const { dir } = results.models[variant] as { dir: string };
    const graph = await loraGraph(join(dir, "unet/model.onnx"), loadConfig().cacheDir);
    results.lora_graphs[variant] = { seconds: (Date.now() - g) / 1000, targets: graph.targets.length };
  } catch (error) {
    results.lora_graphs[variant] = { error: (error as Error).message };
  }
};
const allVariants = [...new Set([...variants, serveVariant])];
const torchEager = torchModes.includes("eager");
await Promise.all([
  ...allVariants.map(prepare),
  torchEager ? torchRun(["eager"]) : Promise.resolve(),
]);
const made = Object.values(results.models).some((m) => "made" in m && m.made);
if (made && results.torch.points.some((p) => p.type === "result")) {
  results.notes.push("PyTorch eager ran while the ONNX models were being made (CPU work, on other cores)");
}
await writeResults();

// 2. The served UNet session at each row count.
for (const variant of variants) {
  if (secondsLeft() < MIN_S.raw) {
    results.cut.push(`UNet ${variant} LoRA graph: ${secondsLeft().toFixed(0)} s left`);
    continue;
  }
  await say(`UNet ${variant} (LoRA graph)`);
  await unetRun(variant, "lora");
  await writeResults();
}
// 3. Served.
if (secondsLeft() >= MIN_S.serve) {
  await say("served /generate");
  await serveRun();
} else results.cut.push(`served /generate: ${secondsLeft().toFixed(0)} s left`);
await writeResults();
// 4. If time allows: the plain graphs, then torch.compile.
if (values.plain === "on") {
  for (const variant of variants) {
    if (secondsLeft() < MIN_S.plain) {
      results.cut.push(`UNet ${variant} plain graph: ${secondsLeft().toFixed(0)} s left`);
      continue;
    }
    await say(`UNet ${variant} (plain graph)`);
    await unetRun(variant, "plain");
    await writeResults();
  }
}
const torchEnv = results.torch.env as { cuda_available?: boolean } | undefined;
if (torchModes.includes("compile") && (!torchEnv || torchEnv.cuda_available)) {
  if (secondsLeft() >= MIN_S.compile) {
    await say("PyTorch torch.compile");
    await torchRun(["compile"]);
  } else results.cut.push(`PyTorch torch.compile: ${secondsLeft().toFixed(0)} s left`);
}
await writeResults();
await say(`done in ${results.seconds.toFixed(0)} s`);
console.log(markdown());
