/**
 * An engine: one model's sessions, batchers, adapter registry and tasks, in a worker of its own so
 * that model runs go back to back without holding up HTTP. It speaks engine/protocol.ts.
 */
/// <reference lib="deno.worker" />
import { trace } from "@opentelemetry/api";
import { setupTelemetry } from "../telemetry.ts";
import { loadServing } from "./load.ts";
import { messageTurn } from "./turn.ts";
import { Tasks } from "./tasks.ts";
import { TaskError } from "./errors.ts";
import type { EngineState, FromEngine, TaskName, ToEngine, WireError } from "./protocol.ts";

const post = (message: FromEngine) => self.postMessage(message);

/** Tasks under way, by the API's id: cancelling one aborts its signal. */
const running = new Map<number, AbortController>();
let tasks: Tasks | undefined;
let faultInjection = false;
let stopTelemetry = () => Promise.resolve();

function state(): EngineState {
  const { model, registry } = tasks!;
  return {
    batches: {
      unet: { ...model.batchers.unet.stats },
      textEncoder: { ...model.batchers.textEncoder.stats },
      vaeDecoder: { ...model.batchers.vaeDecoder.stats },
      vaeEncoder: { ...(model.batchers.vaeEncoder?.stats ?? { runs: 0, rows: 0, calls: 0 }) },
    },
    pendingCalls: model.batchers.unet.pendingCalls,
    adapters: { ...registry.stats, bytes: registry.bytes, resolvedRevisions: registry.resolvedRevisions },
    loadedAdapters: registry.loaded(),
  };
}

function wireError(error: unknown, signal: AbortSignal): WireError {
  if (error instanceof TaskError) {
    return {
      kind: "task",
      status: error.status,
      code: error.code,
      message: error.message,
      field: error.field,
    };
  }
  if (signal.aborted) return { kind: "aborted" };
  console.error(error);
  return { kind: "internal", message: error instanceof Error ? error.message : String(error) };
}

/** How often runs are reported while no reply goes out (metrics stay fresh during long tasks). */
const RUN_REPORT_MS = 250;
let unreported: { rows: number; seconds: number }[] = [];
let reportTimer: ReturnType<typeof setTimeout> | undefined;

function reportRuns() {
  clearTimeout(reportTimer);
  reportTimer = undefined;
  if (unreported.length === 0) return;
  post({ type: "runs", runs: unreported, state: state() });
  unreported = [];
}

/** A task's reply, after the runs it took, so that the API's counters include them. */
function reply(message: Extract<FromEngine, { type: "result" | "error" }>) {
  reportRuns();
  post(message);
}

async function start(message: Extract<ToEngine, { type: "start" }>) {
  faultInjection = message.faultInjection;
  stopTelemetry = setupTelemetry(message.config.telemetry);
  try {
    const { location, model, adapters } = await loadServing(message.config, { nextTurn: messageTurn });
    tasks = new Tasks(model, adapters);
    model.batchers.unet.observers.push((rows, seconds) => {
      unreported.push({ rows, seconds });
      reportTimer ??= setTimeout(reportRuns, RUN_REPORT_MS);
    });
    post({
      type: "ready",
      info: {
        name: location.name,
        model: model.info,
        memory: model.memory,
        provider: model.provider,
        loraTargets: model.loraTargets.length,
      },
      state: state(),
    });
  } catch (error) {
    post({ type: "start_failed", message: error instanceof Error ? error.message : String(error) });
  }
}

function submit({ id, task, input, progress, trace: parent }: Extract<ToEngine, { type: "submit" }>) {
  const controller = new AbortController();
  running.set(id, controller);
  const ctx = {
    signal: controller.signal,
    // the request's span lives in the API; the engine's spans are its children, exported from here
    span: parent && trace.wrapSpanContext(parent),
    onProgress: progress
      ? (step: number, total: number) => post({ type: "progress", id, step, total })
      : undefined,
  };
  const run = tasks![task as TaskName] as (input: unknown, c: typeof ctx) => Promise<unknown>;
  // a task that throws before its first await still replies: it must not become an uncaught error
  Promise.resolve().then(() => run.call(tasks, input, ctx)).then(
    (output) => reply({ type: "result", id, output, state: state() }),
    (error) => reply({ type: "error", id, error: wireError(error, controller.signal), state: state() }),
  ).finally(() => running.delete(id));
}

async function close() {
  for (const controller of running.values()) {
    controller.abort(new DOMException("engine closing", "AbortError"));
  }
  try {
    await tasks?.model.release();
    await stopTelemetry();
  } finally {
    post({ type: "closed" }); // the API stops waiting whatever happened
  }
}

self.onmessage = (event: MessageEvent<ToEngine>) => {
  const message = event.data;
  switch (message.type) {
    case "start":
      return void start(message);
    case "submit":
      return submit(message);
    case "cancel":
      return running.get(message.id)?.abort(new DOMException("cancelled", "AbortError"));
    case "close":
      return void close();
    case "fault":
      if (faultInjection) {
        setTimeout(() => {
          throw new Error("injected engine fault (ENGINE_FAULT_INJECTION)");
        });
      }
  }
};
