/**
 * A diffusion model in the common SD ONNX layout (model_index.json, text_encoder/, unet/,
 * vae_encoder/, vae_decoder/, tokenizer/, scheduler/), with one batcher per session. Its shape
 * facts (latent channels, hidden size, timestep type) come from the sessions' metadata, and the
 * native size and latent scale from the component configs where present.
 */
import * as ort from "onnxruntime-node";
import {
  Batcher,
  type BatchOptions,
  type CallOptions,
  type Feeds,
  type RunBytes,
  type RunFn,
} from "./batcher.ts";
import { ClipTokenizer } from "./tokenizer.ts";
import type { ScheduleConfig } from "./scheduler.ts";
import { type ProviderChoice, type ProviderSelection, selectProvider } from "./execution_provider.ts";
import { loraGraph, sha256Hex } from "../loras/graph_cache.ts";
import type { LoraTarget } from "../loras/graph_rewrite.ts";
import { compositionKey, packLoraFeeds, type RowAdapters } from "../loras/pack.ts";
import {
  type CostCurve,
  fitCurve,
  type ImageGraph,
  machineMemoryBytes,
  measurePeak,
  type MemoryPlan,
  releaseFreedMemory,
  residentBytes,
  runBytes,
  runTooLarge,
} from "./cost.ts";
export type { MemoryPlan };
import {
  floatPrecision,
  fromOutputs,
  type InputSpec,
  inputSpecs,
  isBatchScalar,
  toInputs,
} from "./session_io.ts";

export const VAE_FACTOR = 8;

// ONNX Runtime's own log lines only repeat, in its words, failures it also returns as exceptions,
// which the server reports in one line of its own (start-up) or logs with the request.
ort.env.logLevel = "fatal";

export interface ModelInfo {
  name: string;
  directory: string;
  nativeWidth: number;
  nativeHeight: number;
  latentChannels: number;
  hiddenSize: number;
  scalingFactor: number;
  /** false for exports whose UNet takes one scalar timestep: then only equal timesteps share a run. */
  perRowTimestep: boolean;
  /** The type of the UNet's float inputs: float16 for half-precision exports. */
  precision: "float16" | "float32";
  canEncodeImages: boolean;
}

/** Runs estimated above this hand their freed memory back to the system as they end. */
const RELEASE_AFTER_BYTES = 64 * 2 ** 20;

/** Share of the machine's memory that one run may take (less what the server holds after loading). */
export const DEFAULT_BUDGET_SHARE = 0.5;

export interface ModelOptions {
  batch: BatchOptions;
  /** Bytes one model run may add to resident memory; default: see DEFAULT_BUDGET_SHARE. */
  memoryBudgetBytes?: number;
  executionProvider: ProviderChoice;
  /** Where the LoRA-rewritten UNet is cached. */
  cacheDir: string;
}

/**
 * Recently packed LoRA feeds by batch composition, already in the UNet's input types: consecutive
 * steps of the same requests reuse them.
 */
class PackedLoraCache {
  #entries = new Map<string, Feeds>();
  constructor(
    private readonly targets: LoraTarget[],
    private readonly specs: ReadonlyMap<string, InputSpec>,
    private readonly capacity = 16,
  ) {}

  feeds(rows: readonly RowAdapters[]): Feeds {
    const key = compositionKey(rows);
    let feeds = this.#entries.get(key);
    if (feeds) {
      this.#entries.delete(key);
    } else {
      feeds = toInputs(packLoraFeeds(this.targets, rows), this.specs);
      if (this.#entries.size >= this.capacity) this.#entries.delete(this.#entries.keys().next().value!);
    }
    this.#entries.set(key, feeds);
    return feeds;
  }
}

async function readJson(path: string): Promise<any | undefined> {
  try {
    return JSON.parse(await Deno.readTextFile(path));
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return undefined;
    throw error;
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

function dimOf(session: ort.InferenceSession, input: string, axis: number): number | undefined {
  const meta = session.inputMetadata.find((m) => m.name === input);
  const dim = meta && meta.isTensor ? meta.shape[axis] : undefined;
  return typeof dim === "number" ? dim : undefined;
}

type Sessions = DiffusionModel["sessions"];
type Runners = Record<"textEncoder" | "vaeDecoder", RunFn> & { unet: RunFn<RowAdapters>; vaeEncoder?: RunFn };

/** Opens every graph of the model on one provider, checks it, and builds its batchers. */
async function openModel(directory: string, name: string, options: ModelOptions, provider: string) {
  // A cheap first probe: a provider that is not installed fails here, before the UNet loads.
  const probe = await ort.InferenceSession.create(`${directory}/text_encoder/model.onnx`, {
    executionProviders: [provider],
  });
  await probe.release();
  const sessionOptions: ort.InferenceSession.SessionOptions = {
    executionProviders: [provider],
    graphOptimizationLevel: "all",
    // No CPU arena: ONNX Runtime's arena keeps the peak of the largest run for the process's life
    // (one 1024x1024 request left the embedded model's server at 10 GB); without it, freed
    // activations go back to the system (measured: 995 -> 288 MiB after a 512x512 request).
    enableCpuMemArena: false,
  };
  const open = (part: string) =>
    ort.InferenceSession.create(`${directory}/${part}/model.onnx`, sessionOptions);
  const hasEncoder = await exists(`${directory}/vae_encoder/model.onnx`);
  const lora = await loraGraph(`${directory}/unet/model.onnx`, options.cacheDir);
  const [textEncoder, unet, vaeDecoder, vaeEncoder] = await Promise.all([
    open("text_encoder"),
    ort.InferenceSession.create(lora.path, sessionOptions),
    open("vae_decoder"),
    hasEncoder ? open("vae_encoder") : Promise.resolve(undefined),
  ]);
  const sessions: Sessions = { textEncoder, unet, vaeDecoder, vaeEncoder };
  const schedule: ScheduleConfig = (await readJson(`${directory}/scheduler/scheduler_config.json`)) ?? {
    num_train_timesteps: 1000,
    beta_start: 0.00085,
    beta_end: 0.012,
    beta_schedule: "scaled_linear",
    steps_offset: 1,
  };
  const unetConfig = (await readJson(`${directory}/unet/config.json`)) ?? {};
  const vaeConfig = (await readJson(`${directory}/vae_decoder/config.json`)) ?? {};
  const sampleSize = unetConfig.sample_size ?? dimOf(unet, "sample", 2) ?? 64;
  const unetSpecs = inputSpecs(unet);
  const timestepSpec = unetSpecs.get("timestep");
  const info: ModelInfo = {
    name,
    directory,
    nativeWidth: sampleSize * VAE_FACTOR,
    nativeHeight: sampleSize * VAE_FACTOR,
    latentChannels: dimOf(unet, "sample", 1) ?? unetConfig.in_channels ?? 4,
    hiddenSize: dimOf(unet, "encoder_hidden_states", 2) ?? unetConfig.cross_attention_dim ?? 768,
    scalingFactor: vaeConfig.scaling_factor ?? 0.18215,
    perRowTimestep: !!timestepSpec && !isBatchScalar(timestepSpec),
    precision: floatPrecision(unet),
    canEncodeImages: vaeEncoder !== undefined,
  };
  /** Runs a session on pipeline feeds (see session_io.ts), converted at its edge. */
  const runner = <Row = never>(
    s: ort.InferenceSession,
    extra: (rowData: readonly (Row | undefined)[]) => Feeds = () => ({}),
  ): RunFn<Row> => {
    const specs = inputSpecs(s);
    return async (feeds, rowData) =>
      fromOutputs(await s.run({ ...toInputs(feeds, specs), ...extra(rowData) }) as Feeds);
  };
  const packed = new PackedLoraCache(lora.targets, unetSpecs);
  const runners: Runners = {
    textEncoder: runner(textEncoder),
    unet: runner<RowAdapters>(unet, (rowData) => packed.feeds(rowData.map((r) => r ?? []))),
    vaeDecoder: runner(vaeDecoder),
    vaeEncoder: vaeEncoder && runner(vaeEncoder),
  };
  let text: Float32Array;
  try {
    text = await checkModel(info, runners);
  } catch (error) {
    await releaseSessions(sessions);
    throw new Error(`${provider} cannot run this model: ${(error as Error).message}`);
  }
  // Device providers keep activations in device memory, which peak resident memory does not see.
  const costs = provider === "cpu"
    ? await cachedCosts(directory, options.cacheDir, () => calibrateCosts(info, runners, text))
    : undefined;
  const memory: MemoryPlan = {
    budgetBytes: options.memoryBudgetBytes ??
      Math.max(0, DEFAULT_BUDGET_SHARE * machineMemoryBytes() - residentBytes()),
    costs,
  };
  if (!costs) {
    console.warn(
      provider === "cpu"
        ? "memory budget not enforced: this system does not report peak resident memory"
        : `memory budget not enforced on ${provider}: run costs are measured in host memory only`,
    );
  }
  const batch = { ...options.batch, budgetBytes: costs && memory.budgetBytes };
  /** A graph's estimated run bytes from its image-sized input (`scale`: its pixels per latent position). */
  const bytesOf = (graph: ImageGraph, sample: string, scale = 1): RunBytes => (rows, feeds) => {
    const [, , h, w] = feeds[sample].dims;
    return costs?.[graph] ? runBytes(costs[graph]!, rows, (h / scale) * (w / scale)) : 0;
  };
  /** The runner, handing the freed memory of a large run back to the system right after it. */
  const releasing = <Row>(run: RunFn<Row>, bytes: RunBytes): RunFn<Row> => async (feeds, rowData) => {
    const out = await run(feeds, rowData);
    if (bytes(rowData.length, feeds) > RELEASE_AFTER_BYTES) releaseFreedMemory();
    return out;
  };
  const unetBytes = bytesOf("unet", "sample"), decoderBytes = bytesOf("vaeDecoder", "latent_sample");
  const encoderBytes = bytesOf("vaeEncoder", "sample", VAE_FACTOR);
  const batchers = {
    textEncoder: new Batcher("text_encoder", runners.textEncoder, options.batch),
    unet: new Batcher("unet", releasing(runners.unet, unetBytes), batch, unetBytes),
    vaeDecoder: new Batcher("vae_decoder", releasing(runners.vaeDecoder, decoderBytes), batch, decoderBytes),
    vaeEncoder: runners.vaeEncoder &&
      new Batcher("vae_encoder", releasing(runners.vaeEncoder, encoderBytes), batch, encoderBytes),
  };
  const tokenizer = await ClipTokenizer.load(`${directory}/tokenizer`);
  return [info, tokenizer, schedule, sessions, batchers, lora.targets, memory] as const;
}

type Graph = keyof Runners;

/** One row of made-up inputs for a graph at a latent of side x side (the UNet also takes `text`). */
function probeFeeds(graph: Graph, info: ModelInfo, side: number, text?: Float32Array): Feeds {
  const c = info.latentChannels;
  const latent = (fill: number) =>
    new ort.Tensor("float32", new Float32Array(c * side * side).fill(fill), [1, c, side, side]);
  switch (graph) {
    case "textEncoder": {
      const ids = new Int32Array(77).fill(49407);
      ids[0] = 49406;
      return { input_ids: new ort.Tensor("int32", ids, [1, 77]) };
    }
    case "unet":
      return {
        sample: latent(0.5),
        timestep: new ort.Tensor("float32", Float32Array.of(500), [1]),
        encoder_hidden_states: new ort.Tensor("float32", text!, [
          1,
          text!.length / info.hiddenSize,
          info.hiddenSize,
        ]),
      };
    case "vaeDecoder":
      return { latent_sample: latent(0) };
    case "vaeEncoder": {
      const pixels = side * VAE_FACTOR;
      return {
        sample: new ort.Tensor("float32", new Float32Array(3 * pixels * pixels), [1, 3, pixels, pixels]),
      };
    }
  }
}

/**
 * One row through every graph at 64x64 pixels, as serving runs them (LoRA inputs included): a
 * provider that cannot run the model fails at start rather than in a request, and the sessions are
 * warm. Non-finite outputs (a float16 overflow) fail too. Returns the empty prompt's embedding.
 */
async function checkModel(info: ModelInfo, runners: Runners): Promise<Float32Array> {
  const run = async (graph: Graph, text?: Float32Array) => {
    const out = await runners[graph]!(probeFeeds(graph, info, 8, text), [undefined]);
    const data = Object.values(out)[0].data as Float32Array;
    if (!data.every(Number.isFinite)) throw new Error(`the ${graph} graph returned non-finite values`);
    return data;
  };
  const text = await run("textEncoder");
  await run("unet", text);
  await run("vaeDecoder");
  if (runners.vaeEncoder) await run("vaeEncoder");
  return text;
}

/** Latent sides the cost curves are measured at, up to SD 1.5's native 512x512 pixels. */
const CALIBRATION_SIDES = [16, 32, 64];

/**
 * Each image-sized graph's memory curve (see pipeline/cost.ts), measured one row at a time from the
 * smallest size up; undefined where the system does not report peak memory.
 */
async function calibrateCosts(info: ModelInfo, runners: Runners, text: Float32Array) {
  const costs: Partial<Record<ImageGraph, CostCurve>> = {};
  for (const graph of ["unet", "vaeDecoder", "vaeEncoder"] as const) {
    const run = runners[graph];
    if (!run) continue;
    const points = [];
    for (const side of CALIBRATION_SIDES) {
      const feeds = probeFeeds(graph, info, side, text);
      const bytes = await measurePeak(() => run(feeds, [undefined]));
      if (bytes === undefined) return undefined;
      points.push({ positions: side * side, bytes });
    }
    costs[graph] = fitCurve(points);
  }
  return costs;
}

/**
 * The measured costs of this model directory from the server's cache, or measured now and cached:
 * at SD 1.5's size the measurement takes tens of seconds on a CPU. Keyed by the graphs' paths, sizes
 * and modification times, and this code's curve format.
 */
async function cachedCosts(
  directory: string,
  cacheDir: string,
  measure: () => Promise<MemoryPlan["costs"]>,
): Promise<MemoryPlan["costs"]> {
  const parts = [];
  for (const graph of ["unet", "vae_decoder", "vae_encoder"]) {
    const stat = await Deno.stat(`${directory}/${graph}/model.onnx`).catch(() => undefined);
    parts.push(`${graph}:${stat?.size}:${stat?.mtime?.getTime()}`);
  }
  const key = await sha256Hex(new TextEncoder().encode(`v1|${directory}|${parts}`));
  const path = `${cacheDir}/run-costs/${key}.json`;
  const cached = await readJson(path);
  if (cached) return cached;
  const costs = await measure();
  if (costs) {
    await Deno.mkdir(`${cacheDir}/run-costs`, { recursive: true });
    await Deno.writeTextFile(path, JSON.stringify(costs));
  }
  return costs;
}

async function releaseSessions(sessions: Sessions): Promise<void> {
  await Promise.all(
    Object.values(sessions).filter((s): s is ort.InferenceSession => !!s).map((s) => s.release()),
  );
}

export class DiffusionModel {
  private constructor(
    readonly info: ModelInfo,
    readonly tokenizer: ClipTokenizer,
    readonly schedule: ScheduleConfig,
    readonly sessions: Record<"textEncoder" | "unet" | "vaeDecoder", ort.InferenceSession> & {
      vaeEncoder?: ort.InferenceSession;
    },
    readonly batchers: Record<"textEncoder" | "vaeDecoder", Batcher> & {
      unet: Batcher<RowAdapters>;
      vaeEncoder?: Batcher;
    },
    /** The attention projections that take per-row LoRA inputs. */
    readonly loraTargets: LoraTarget[],
    /** Bytes a model run may add, and what runs cost (measured at start). */
    readonly memory: MemoryPlan,
    /** The execution provider in use and those passed over. */
    readonly provider: ProviderSelection,
  ) {}

  /** See cost.ts `runTooLarge`. */
  runTooLarge(width: number, height: number, unetRows: number, imageRows: number): number | undefined {
    return runTooLarge(this.memory, width, height, unetRows, imageRows);
  }

  /**
   * Loads the model on the configured execution provider. Each candidate provider must open every
   * graph and pass `checkModel`; `auto` moves on to the next one when it cannot, saying why.
   */
  static async load(directory: string, name: string, options: ModelOptions): Promise<DiffusionModel> {
    let opened: Awaited<ReturnType<typeof openModel>> | undefined;
    const selection = await selectProvider(options.executionProvider, async (provider) => {
      opened = await openModel(directory, name, options, provider);
    });
    for (const { provider, reason } of selection.skipped) {
      console.warn(`execution provider ${provider} unavailable: ${reason}`);
    }
    return new DiffusionModel(...opened!, selection);
  }

  /** Text embeddings [n, 77, hidden] for n prompts, flattened. */
  async encodeText(prompts: string[], options: CallOptions = {}): Promise<Float32Array> {
    const ids = prompts.map((p) => this.tokenizer.tokenize(p));
    const length = ids[0].length;
    const flat = new Int32Array(prompts.length * length);
    ids.forEach((row, i) => flat.set(row, i * length));
    const input = new ort.Tensor("int32", flat, [prompts.length, length]);
    const out = await this.batchers.textEncoder.submit({ input_ids: input }, options);
    return out[this.sessions.textEncoder.outputNames[0]].data as Float32Array;
  }

  /**
   * The UNet's noise prediction for `rows` latents [rows, C, h, w] at one timestep, with their
   * text embeddings [rows, 77, hidden].
   */
  async predictNoise(
    latents: Float32Array,
    shape: { rows: number; height: number; width: number },
    timestep: number,
    embeddings: Float32Array,
    options: CallOptions & { adapters?: readonly RowAdapters[] } = {},
  ): Promise<Float32Array> {
    const { rows, height, width } = shape;
    const c = this.info.latentChannels;
    const feeds: Feeds = {
      sample: new ort.Tensor("float32", latents, [rows, c, height, width]),
      // one per row; an export that takes one for the batch gets the first (all equal: see `key`)
      timestep: new ort.Tensor("float32", new Float32Array(rows).fill(timestep), [rows]),
      encoder_hidden_states: new ort.Tensor("float32", embeddings, [
        rows,
        embeddings.length / rows / this.info.hiddenSize,
        this.info.hiddenSize,
      ]),
    };
    const key = this.info.perRowTimestep ? `${height}x${width}` : `${height}x${width}@${timestep}`;
    const out = await this.batchers.unet.submit(feeds, {
      ...options,
      key,
      tag: timestep,
      rowData: options.adapters,
    });
    return out[this.sessions.unet.outputNames[0]].data as Float32Array;
  }

  /** Scaled latents [n, C, h, w] -> images [n, 3, 8h, 8w] in [-1, 1]. */
  async decodeLatents(
    latents: Float32Array,
    shape: { rows: number; height: number; width: number },
    options: CallOptions = {},
  ): Promise<Float32Array> {
    const { rows, height, width } = shape;
    const unscaled = latents.map((v) => v / this.info.scalingFactor);
    const feeds = {
      latent_sample: new ort.Tensor("float32", unscaled, [rows, this.info.latentChannels, height, width]),
    };
    const out = await this.batchers.vaeDecoder.submit(feeds, { ...options, key: `${height}x${width}` });
    return out[this.sessions.vaeDecoder.outputNames[0]].data as Float32Array;
  }

  /** Images [n, 3, H, W] in [-1, 1] -> scaled latent means [n, C, H/8, W/8]. */
  async encodeImages(
    pixels: Float32Array,
    shape: { rows: number; height: number; width: number },
    options: CallOptions = {},
  ): Promise<Float32Array> {
    const encoder = this.sessions.vaeEncoder, batcher = this.batchers.vaeEncoder;
    if (!encoder || !batcher) throw new Error("this model has no VAE encoder");
    const { rows, height, width } = shape;
    const feeds = { sample: new ort.Tensor("float32", pixels, [rows, 3, height, width]) };
    const out = await batcher.submit(feeds, { ...options, key: `${height}x${width}` });
    const params = out[encoder.outputNames[0]];
    const c = this.info.latentChannels;
    const perRow = params.data.length / rows;
    const latentSize = (height / VAE_FACTOR) * (width / VAE_FACTOR) * c;
    // `latent_parameters` carries mean then log-variance per row; `latent_sample` is the latent itself.
    const result = new Float32Array(rows * latentSize);
    for (let r = 0; r < rows; r++) {
      const mean = (params.data as Float32Array).subarray(r * perRow, r * perRow + latentSize);
      for (let i = 0; i < latentSize; i++) result[r * latentSize + i] = mean[i] * this.info.scalingFactor;
    }
    return result;
  }

  /** Refuses further calls, fails the queued ones, and releases the sessions once no run executes. */
  async release(): Promise<void> {
    const batchers: (Batcher | Batcher<RowAdapters> | undefined)[] = Object.values(this.batchers);
    const closing = new Error(`model ${this.info.name} released`);
    await Promise.all(batchers.map((b) => b?.close(closing)));
    await releaseSessions(this.sessions);
  }
}
