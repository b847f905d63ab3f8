/**
 * The messages between the API (main thread) and an engine (a worker). The API submits tasks and
 * may cancel them; the engine answers each with progress (if asked), then one result or error, and
 * reports its batched UNet runs. Messages are few on purpose: each one wakes the API's thread, which
 * shares the machine's cores with the model's. Each message carries plain data only (structured clone).
 */
import type { SpanContext } from "@opentelemetry/api";
import type { Config } from "../config.ts";
import type { MemoryPlan, ModelInfo } from "../pipeline/model.ts";
import type { ProviderSelection } from "../pipeline/execution_provider.ts";
import type { RunStats } from "../pipeline/batcher.ts";
import type { Tasks } from "./tasks.ts";
import type { AdapterRegistry } from "../loras/registry.ts";

export type TaskName = "generate" | "invert" | "edit" | "interpolate" | "cachedAdapters";
export type TaskInput<T extends TaskName> = Parameters<Tasks[T]>[0];
export type TaskOutput<T extends TaskName> = Awaited<ReturnType<Tasks[T]>>;

/** What the API shows of the model: fixed once the engine has started. */
export interface EngineInfo {
  name: string;
  model: ModelInfo;
  memory: MemoryPlan;
  provider: ProviderSelection;
  loraTargets: number;
}

/** The engine's counters, sent with every run and reply so the API reads them without asking. */
export interface EngineState {
  /** Each graph's batched runs so far. */
  batches: Record<"unet" | "textEncoder" | "vaeDecoder" | "vaeEncoder", RunStats>;
  /** UNet calls waiting for a run. */
  pendingCalls: number;
  adapters: { hits: number; misses: number; downloads: number; bytes: number; resolvedRevisions: number };
  loadedAdapters: ReturnType<AdapterRegistry["loaded"]>;
}

/** A task's failure as it crosses: the request's fault, a stop it asked for, or the engine's. */
export type WireError =
  | {
    kind: "task";
    status: 400 | 403 | 404 | 413 | 422 | 502 | 503 | 504;
    code: string;
    message: string;
    field?: string;
  }
  | { kind: "aborted" }
  | { kind: "internal"; message: string };

export type ToEngine =
  | { type: "start"; config: Config; faultInjection: boolean }
  /** `progress`: whether the caller listens to the task's steps (else none are sent). */
  | { type: "submit"; id: number; task: TaskName; input: unknown; progress: boolean; trace?: SpanContext }
  | { type: "cancel"; id: number }
  | { type: "close" }
  /** Testing only (ENGINE_FAULT_INJECTION): the worker throws an uncaught error, as a bug would. */
  | { type: "fault" };

export type FromEngine =
  | { type: "ready"; info: EngineInfo; state: EngineState }
  | { type: "start_failed"; message: string }
  | { type: "progress"; id: number; step: number; total: number }
  | { type: "result"; id: number; output: unknown; state: EngineState }
  | { type: "error"; id: number; error: WireError; state: EngineState }
  /** The batched UNet runs since the last report: sent before each reply and at most every 250 ms. */
  | { type: "runs"; runs: { rows: number; seconds: number }[]; state: EngineState }
  | { type: "closed" };
