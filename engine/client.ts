/**
 * The API's handle on an engine running in a worker (engine/worker.ts): tasks submitted as messages,
 * answered by progress, then a result or an error. A caller's abort signal cancels its task in the
 * engine; the call settles once the engine has stopped it. The request's span context travels with
 * each task, so the engine's spans join the request's trace.
 *
 * A worker that dies (an uncaught error) fails the calls it held with EngineUnavailable, and a new
 * one is started; `ready` is false until it is.
 */
import type { Span } from "@opentelemetry/api";
import type { Config } from "../config.ts";
import { EngineUnavailable, TaskError } from "./errors.ts";
import type {
  EngineInfo,
  EngineState,
  FromEngine,
  TaskInput,
  TaskName,
  TaskOutput,
  ToEngine,
  WireError,
} from "./protocol.ts";

export interface CallOptions {
  signal?: AbortSignal;
  span?: Span;
  onProgress?: (step: number, total: number) => void;
}

interface PendingTask {
  resolve: (output: unknown) => void;
  reject: (error: unknown) => void;
  onProgress?: (step: number, total: number) => void;
  signal?: AbortSignal;
}

/** Told about every batched UNet run: its rows and how long it took. */
export type RunListener = (rows: number, seconds: number) => void;

const RESTART_DELAY_MS = 1000;
/** How long `close` waits for the engine to release its sessions and flush its spans. */
const CLOSE_TIMEOUT_MS = 30_000;

export class EngineClient {
  readonly runListeners = new Set<RunListener>();
  /** How many times the worker died and was started again. */
  restarts = 0;
  #worker!: Worker;
  #ready = false;
  #closing = false;
  #nextId = 1;
  #pending = new Map<number, PendingTask>();
  #state!: EngineState;
  #info!: EngineInfo;

  private constructor(private readonly config: Config, private readonly faultInjection: boolean) {}

  /** Starts an engine for `config`'s model; rejects with the engine's reason if it cannot start. */
  static async start(config: Config, options: { faultInjection?: boolean } = {}): Promise<EngineClient> {
    const client = new EngineClient(config, options.faultInjection ?? false);
    await client.#spawn();
    return client;
  }

  get info(): EngineInfo {
    return this.#info;
  }

  /** The engine's counters as of its last message. */
  get state(): EngineState {
    return this.#state;
  }

  /** False while the worker is (re)starting or closed. */
  get ready(): boolean {
    return this.#ready;
  }

  #spawn(): Promise<void> {
    const worker = new Worker(new URL("./worker.ts", import.meta.url), { type: "module", name: "engine" });
    this.#worker = worker;
    return new Promise((resolve, reject) => {
      worker.onmessage = (event: MessageEvent<FromEngine>) => {
        const message = event.data;
        if (message.type === "ready") {
          this.#info = message.info;
          this.#state = message.state;
          this.#ready = true;
          resolve();
        } else if (message.type === "start_failed") {
          worker.terminate();
          reject(new Error(message.message));
        } else {
          this.#receive(message);
        }
      };
      worker.onerror = (event) => {
        event.preventDefault(); // the worker's fault is not the server's: restart it
        if (!this.#ready) {
          worker.terminate();
          reject(new Error(`the engine failed while starting: ${event.message}`));
        } else {
          this.#died(worker, event.message);
        }
      };
      worker.postMessage(
        { type: "start", config: this.config, faultInjection: this.faultInjection } satisfies ToEngine,
      );
    });
  }

  #post(message: ToEngine): void {
    this.#worker.postMessage(message);
  }

  #receive(message: Exclude<FromEngine, { type: "ready" | "start_failed" }>): void {
    switch (message.type) {
      case "progress":
        return this.#pending.get(message.id)?.onProgress?.(message.step, message.total);
      case "runs":
        this.#state = message.state;
        for (const { rows, seconds } of message.runs) {
          for (const listen of this.runListeners) {
            try {
              listen(rows, seconds);
            } catch (error) {
              console.error("engine run listener failed:", error); // a listener never fails the engine
            }
          }
        }
        return;
      case "result":
      case "error": {
        this.#state = message.state;
        const task = this.#pending.get(message.id);
        if (!task) return;
        this.#pending.delete(message.id);
        if (message.type === "result") task.resolve(message.output);
        else task.reject(this.#error(message.error, task.signal));
        return;
      }
      case "closed":
        return;
    }
  }

  #error(error: WireError, signal?: AbortSignal): unknown {
    switch (error.kind) {
      case "task":
        return new TaskError(error.status, error.code, error.message, error.field);
      case "aborted": // by the caller, or by the engine closing under it
        return signal?.aborted ? signal.reason : new EngineUnavailable("the model's engine stopped");
      case "internal":
        return new Error(`engine: ${error.message}`);
    }
  }

  /** The worker is gone: its tasks fail as unavailable, and a new worker starts. */
  #died(worker: Worker, reason: string): void {
    if (worker !== this.#worker) return;
    worker.terminate();
    this.#ready = false;
    console.error(`engine: the worker died (${reason}); restarting it`);
    const failure = new EngineUnavailable(`the model's engine stopped (${reason}); retry shortly`);
    for (const task of this.#pending.values()) task.reject(failure);
    this.#pending.clear();
    if (this.#closing) return;
    this.restarts++;
    const restart = (): Promise<void> =>
      this.#spawn().catch(async (error) => {
        console.error(`engine: restart failed: ${error.message}; trying again`);
        await new Promise((r) => setTimeout(r, RESTART_DELAY_MS));
        if (!this.#closing) return restart();
      });
    void restart();
  }

  /** Runs `task` in the engine. Rejects with TaskError (the request's fault), the signal's reason, or EngineUnavailable. */
  call<T extends TaskName>(task: T, input: TaskInput<T>, options: CallOptions = {}): Promise<TaskOutput<T>> {
    const { signal, span, onProgress } = options;
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.#closing) return Promise.reject(new EngineUnavailable("the model's engine is stopping"));
    if (!this.#ready) {
      return Promise.reject(new EngineUnavailable("the model's engine is starting; retry shortly"));
    }
    const id = this.#nextId++;
    const cancel = () => this.#post({ type: "cancel", id });
    return new Promise<TaskOutput<T>>((resolve, reject) => {
      const settle = <A>(fn: (arg: A) => void) => (arg: A) => {
        signal?.removeEventListener("abort", cancel);
        fn(arg);
      };
      this.#pending.set(id, {
        resolve: settle(resolve as (o: unknown) => void),
        reject: settle(reject),
        onProgress,
        signal,
      });
      signal?.addEventListener("abort", cancel, { once: true });
      const trace = span?.spanContext();
      this.#post({
        type: "submit",
        id,
        task,
        input,
        progress: onProgress !== undefined,
        trace: trace && { traceId: trace.traceId, spanId: trace.spanId, traceFlags: trace.traceFlags },
      });
    });
  }

  /** Testing only: makes the worker throw an uncaught error (needs ENGINE_FAULT_INJECTION). */
  injectFault(): void {
    this.#post({ type: "fault" });
  }

  /** Stops the engine: tasks still running are aborted, the sessions released, its spans flushed. */
  async close(): Promise<void> {
    this.#closing = true;
    if (this.#ready) {
      const worker = this.#worker;
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((resolve) => {
        worker.addEventListener("message", (event: MessageEvent<FromEngine>) => {
          if (event.data.type === "closed") resolve();
        });
        worker.addEventListener("error", () => resolve()); // it died closing: nothing to wait for
        timer = setTimeout(resolve, CLOSE_TIMEOUT_MS);
        this.#post({ type: "close" });
      });
      clearTimeout(timer);
    }
    this.#ready = false;
    this.#worker.terminate();
    const failure = new EngineUnavailable("the engine has stopped");
    for (const task of this.#pending.values()) task.reject(failure);
    this.#pending.clear();
  }
}
