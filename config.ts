/** The server's configuration: one typed object, validated once from the environment at start-up. */
import { z } from "zod";
import { PROVIDER_CHOICES, type ProviderChoice } from "./pipeline/execution_provider.ts";

const integer = (fallback: number, min = 0) => z.coerce.number().int().min(min).default(fallback);
const flag = (fallback: boolean) =>
  z.enum(["1", "0", "true", "false", "on", "off"]).default(fallback ? "on" : "off").transform((v) =>
    ["1", "true", "on"].includes(v)
  );

export const EMBEDDED_MODEL_DIR = new URL("./models/tiny-sd-shapes", import.meta.url).pathname;
/** The Hub cache this repository ships (adapters usable with no network). */
export const BUNDLED_HUB_CACHE = new URL("./models/hub-cache", import.meta.url).pathname;

const schema = z.object({
  PORT: integer(8000),
  HOST: z.string().default("0.0.0.0"),
  MODEL: z.string().optional(),
  EXECUTION_PROVIDER: z.enum(PROVIDER_CHOICES).default("cpu"),
  SHUTDOWN_TIMEOUT_MS: integer(30_000),
  API_KEYS: z.string().default(""),
  CORS_ORIGINS: z.string().default(""),
  REQUEST_TIMEOUT_MS: integer(300_000, 1),
  BODY_READ_TIMEOUT_MS: integer(30_000, 1),
  SHUTDOWN_DRAIN_DELAY_MS: integer(0),
  BATCHING: flag(true),
  BATCH_MAX_ROWS: integer(64, 1),
  BATCH_MAX_WAIT_MS: integer(0),
  MAX_CONCURRENT_REQUESTS: integer(32, 1),
  MAX_STEPS: integer(150, 1),
  MAX_PIXELS: integer(1024 * 1024, 64),
  MAX_IMAGES: integer(8, 1),
  MAX_BODY_BYTES: integer(20 * 1024 * 1024, 1024),
  MAX_IMAGE_BYTES: integer(10 * 1024 * 1024, 1024),
  MAX_INPUT_PIXELS: integer(4096 * 4096, 64),
  MAX_FRAMES: integer(64, 2),
  MEMORY_BUDGET_BYTES: z.coerce.number().int().min(1).optional(),
  JOB_TTL_S: integer(600, 1),
  MAX_FINISHED_JOBS: integer(256, 1),
  HF_ENDPOINT: z.string().url().default("https://huggingface.co"),
  HF_TOKEN: z.string().optional(),
  HF_HUB_CACHE: z.string().optional(),
  HF_HOME: z.string().optional(),
  CACHE_DIR: z.string().optional(),
  HF_HUB_OFFLINE: flag(false),
  HUB_TIMEOUT_MS: integer(60_000, 1),
  LORA_MAX_BYTES: integer(512 * 1024 * 1024, 1),
  LORA_CACHE_BYTES: integer(1024 * 1024 * 1024, 1),
  LORA_ALLOWLIST: z.string().default(""),
  LORA_REVISION_TTL_S: integer(60),
  LORA_BUNDLED_CACHE: z.string().optional(),
  OTEL_EXPORTER_OTLP_ENDPOINT: z.string().url().optional(),
  OTEL_SERVICE_NAME: z.string().default("smooth-diffusion-server"),
  ENGINE_FAULT_INJECTION: flag(false),
});

/** Every environment variable the server reads. */
export const CONFIG_VARIABLES: readonly string[] = Object.keys(schema.shape);

export interface Config {
  port: number;
  host: string;
  /** Unset: the embedded model. A local directory, or a Hugging Face repo id. */
  model?: string;
  executionProvider: ProviderChoice;
  /** `bodyReadTimeoutMs`: how long a request's body may take to arrive (408 past it). */
  access: { apiKeys: string[]; corsOrigins: string[]; requestTimeoutMs: number; bodyReadTimeoutMs: number };
  /** SIGTERM: how long to keep answering (readiness 503) before closing, and the deadline for in-flight work. */
  shutdown: { drainDelayMs: number; timeoutMs: number };
  batch: { enabled: boolean; maxRows: number; maxWaitMs: number };
  /** Finished asynchronous jobs: kept this long, at most this many. */
  jobs: { ttlMs: number; maxFinished: number };
  /** Bytes one model run may add to the server's resident memory; unset: derived at start (see pipeline/cost.ts). */
  memoryBudgetBytes?: number;
  limits: {
    maxConcurrentRequests: number;
    maxSteps: number;
    maxPixels: number;
    maxImages: number;
    maxBodyBytes: number;
    maxImageBytes: number;
    maxInputPixels: number;
    maxFrames: number;
  };
  hub: { endpoint: string; token?: string; cacheDir: string; offline: boolean; timeoutMs: number };
  adapters: {
    maxBytes: number;
    memoryBytes: number;
    allowlist: string[];
    bundledCacheDirs: string[];
    revisionTtlMs: number;
  };
  /** The server's own cache (the LoRA-rewritten UNet graphs). */
  cacheDir: string;
  telemetry: { otlpEndpoint?: string; serviceName: string };
  /** Testing only: lets the engine be told to fail as a bug would, to exercise its restart. */
  engineFaultInjection: boolean;
}

export function loadConfig(env: Record<string, string | undefined> = Deno.env.toObject()): Config {
  const blank = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v !== ""));
  const parsed = schema.safeParse(blank);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; ");
    throw new Error(`invalid configuration: ${problems}`);
  }
  const e = parsed.data;
  const home = e.HF_HOME ?? `${env.HOME ?? "."}/.cache/huggingface`;
  return {
    port: e.PORT,
    host: e.HOST,
    model: e.MODEL,
    executionProvider: e.EXECUTION_PROVIDER,
    access: {
      apiKeys: e.API_KEYS.split(",").map((k) => k.trim()).filter(Boolean),
      corsOrigins: e.CORS_ORIGINS.split(",").map((o) => o.trim()).filter(Boolean),
      requestTimeoutMs: e.REQUEST_TIMEOUT_MS,
      bodyReadTimeoutMs: e.BODY_READ_TIMEOUT_MS,
    },
    shutdown: { drainDelayMs: e.SHUTDOWN_DRAIN_DELAY_MS, timeoutMs: e.SHUTDOWN_TIMEOUT_MS },
    batch: { enabled: e.BATCHING, maxRows: e.BATCH_MAX_ROWS, maxWaitMs: e.BATCH_MAX_WAIT_MS },
    memoryBudgetBytes: e.MEMORY_BUDGET_BYTES,
    jobs: { ttlMs: e.JOB_TTL_S * 1000, maxFinished: e.MAX_FINISHED_JOBS },
    limits: {
      maxConcurrentRequests: e.MAX_CONCURRENT_REQUESTS,
      maxSteps: e.MAX_STEPS,
      maxPixels: e.MAX_PIXELS,
      maxImages: e.MAX_IMAGES,
      maxBodyBytes: e.MAX_BODY_BYTES,
      maxImageBytes: e.MAX_IMAGE_BYTES,
      maxInputPixels: e.MAX_INPUT_PIXELS,
      maxFrames: e.MAX_FRAMES,
    },
    hub: {
      endpoint: e.HF_ENDPOINT,
      token: e.HF_TOKEN,
      cacheDir: e.HF_HUB_CACHE ?? `${home}/hub`,
      offline: e.HF_HUB_OFFLINE,
      timeoutMs: e.HUB_TIMEOUT_MS,
    },
    adapters: {
      maxBytes: e.LORA_MAX_BYTES,
      memoryBytes: e.LORA_CACHE_BYTES,
      allowlist: e.LORA_ALLOWLIST.split(",").map((p) => p.trim()).filter(Boolean),
      bundledCacheDirs: (e.LORA_BUNDLED_CACHE ?? BUNDLED_HUB_CACHE).split(",").filter(Boolean),
      revisionTtlMs: e.LORA_REVISION_TTL_S * 1000,
    },
    cacheDir: e.CACHE_DIR ?? `${env.XDG_CACHE_HOME ?? `${env.HOME ?? "."}/.cache`}/smooth-diffusion`,
    telemetry: { otlpEndpoint: e.OTEL_EXPORTER_OTLP_ENDPOINT, serviceName: e.OTEL_SERVICE_NAME },
    engineFaultInjection: e.ENGINE_FAULT_INJECTION,
  };
}
