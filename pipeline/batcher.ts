/**
 * Continuous batching for one ONNX session. Callers submit row-major feeds (dim 0 = rows) and
 * await their own rows of the outputs; the batcher gathers every pending call with the same
 * compatibility key (e.g. the latent size), runs ONE `session.run` over their concatenated rows,
 * and splits the outputs back. One run is in flight at a time; calls that arrive meanwhile join
 * the next run.
 *
 * A caller that submits one call after another (a denoising loop) holds a track while it loops.
 * When every open track has its next call queued, the next run starts at once: the runs go back to
 * back, and requests at different timesteps, prompts or step counts share each of them. Calls
 * without a track (one-off text-encoder and VAE calls), or a track that has not yet queued its next
 * step, wait one timer turn, so that calls submitted in the same turn share the run. The engine
 * runs in a worker of its own, so back-to-back runs never hold up HTTP (engine/worker.ts); between
 * them it reads its own inbox (`nextTurn`).
 */
import * as ort from "onnxruntime-node";
import type { Link } from "@opentelemetry/api";
import { type Span, startSpan } from "../telemetry.ts";

export type Feeds = Record<string, ort.Tensor>;
type TypedArray = Float32Array | Int32Array | BigInt64Array;

export interface BatchOptions {
  /** Upper bound on rows per run; a single call larger than this still runs, alone. */
  maxRows: number;
  /** How long the oldest pending call may wait for others before a run that is not full starts. */
  maxWaitMs: number;
  /** false: one call per run (for benchmarks against no batching). */
  enabled: boolean;
  /** Bytes a run may cost: calls join a run only while `runBytes` of its rows stays within it. */
  budgetBytes?: number;
  /**
   * How a run that can start at once is started: by default after the calls being submitted now
   * (a microtask). The engine passes a turn that first reads its inbox (engine/turn.ts): onnxruntime-
   * node runs a session synchronously, so runs chained by microtasks alone would leave new tasks
   * and cancellations unread until the loops end.
   */
  nextTurn?: (start: () => void) => void;
}

/** Estimated peak bytes of one run of `rows` rows shaped like `feeds`. */
export type RunBytes = (rows: number, feeds: Feeds) => number;

/** A caller's loop of calls: see the module's comment. Closed when the loop ends, however it ends. */
export interface Track {
  close(): void;
}

interface TrackState {
  queued: number;
}

export interface CallOptions<Row = never> {
  key?: string;
  /** The loop this call belongs to. */
  track?: Track;
  signal?: AbortSignal;
  /** The request span this call serves: the run's span links to it. */
  span?: Span;
  /** A value recorded in the run's span, e.g. the timestep (set of distinct values). */
  tag?: number;
  /** Per-row data for the run function that is not a tensor (e.g. each row's LoRA adapters). */
  rowData?: readonly Row[];
}

interface PendingCall<Row> extends CallOptions<Row> {
  state?: TrackState;
  feeds: Feeds;
  rows: number;
  arrived: number;
  resolve: (outputs: Feeds) => void;
  reject: (error: unknown) => void;
}

export interface RunStats {
  runs: number;
  rows: number;
  calls: number;
}

/** Runs the model on concatenated feeds; `rowData` lists each row's per-row data (or undefined). */
export type RunFn<Row = never> = (feeds: Feeds, rowData: readonly (Row | undefined)[]) => Promise<Feeds>;

/** Told about every finished run: its rows and its duration. */
export type RunObserver = (rows: number, seconds: number) => void;

/** `Row`: the per-row data its calls carry beside their tensors (none by default). */
export class Batcher<Row = never> {
  readonly stats: RunStats = { runs: 0, rows: 0, calls: 0 };
  readonly observers: RunObserver[] = [];
  #queue: PendingCall<Row>[] = [];
  #running = false;
  #inFlight: Promise<void> | undefined;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #soon = false;
  #tracks = new Map<Track, TrackState>();
  /** Open tracks with no call queued: while there are any, a run that is not full waits a timer turn. */
  #waiting = 0;
  /** Why the batcher was closed: calls are refused with it. */
  #closed: Error | undefined;

  constructor(
    readonly name: string,
    private readonly run: RunFn<Row>,
    private readonly options: BatchOptions,
    private readonly runBytes?: RunBytes,
  ) {}

  /** Whether `rows` rows shaped like `feeds` fit in one run's byte budget. */
  fits(rows: number, feeds: Feeds): boolean {
    const budget = this.options.budgetBytes;
    return budget === undefined || !this.runBytes || this.runBytes(rows, feeds) <= budget;
  }

  get pendingCalls(): number {
    return this.#queue.length;
  }

  /** Resolves once no run is in flight (calls still queued are not waited for: abort them first). */
  async idle(): Promise<void> {
    while (this.#inFlight) await this.#inFlight;
  }

  /**
   * Refuses new calls, fails the queued ones with `reason`, and resolves once the run in flight (if
   * any) is over: after it, nothing will run the session again, so it can be released.
   */
  close(reason: Error): Promise<void> {
    this.#closed = reason;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    const queued = this.#queue;
    this.#queue = [];
    for (const call of queued) {
      this.#dequeued(call);
      call.reject(reason);
    }
    return this.idle();
  }

  /** Opens a track for a loop of calls; close it when the loop ends. */
  openTrack(): Track {
    const state: TrackState = { queued: 0 };
    this.#waiting++;
    const track: Track = {
      close: () => {
        if (!this.#tracks.delete(track)) return;
        if (state.queued === 0) this.#waiting--;
        this.#schedule();
      },
    };
    this.#tracks.set(track, state);
    return track;
  }

  submit(feeds: Feeds, options: CallOptions<Row> = {}): Promise<Feeds> {
    options.signal?.throwIfAborted();
    if (this.#closed) return Promise.reject(this.#closed);
    const rows = Object.values(feeds)[0].dims[0];
    const state = options.track && this.#tracks.get(options.track);
    return new Promise<Feeds>((resolve, reject) => {
      this.#queue.push({ ...options, state, feeds, rows, arrived: performance.now(), resolve, reject });
      if (state && state.queued++ === 0) this.#waiting--;
      this.#schedule();
    });
  }

  #dequeued(call: PendingCall<Row>): void {
    if (call.state && --call.state.queued === 0 && this.#tracks.has(call.track!)) this.#waiting++;
  }

  /**
   * The next pump: at once (after the calls being submitted in this microtask) when every open
   * track has queued its call, else one timer turn away (or when the oldest call's wait is up).
   */
  #schedule(delayMs = 0): void {
    if (this.#running || this.#soon || this.#queue.length === 0) return;
    if (this.#waiting === 0 && delayMs === 0) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
      this.#soon = true;
      (this.options.nextTurn ?? queueMicrotask)(() => {
        this.#soon = false;
        this.#pump();
      });
      return;
    }
    if (this.#timer !== undefined) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#pump();
    }, delayMs);
  }

  #dropAborted(): void {
    this.#queue = this.#queue.filter((call) => {
      if (!call.signal?.aborted) return true;
      this.#dequeued(call);
      call.reject(call.signal.reason ?? new DOMException("aborted", "AbortError"));
      return false;
    });
  }

  #takeBatch(): PendingCall<Row>[] {
    const key = this.#queue[0].key;
    const batch: PendingCall<Row>[] = [];
    let rows = 0;
    for (const call of this.#queue) {
      if (call.key !== key) continue;
      const full = rows + call.rows > this.options.maxRows || !this.fits(rows + call.rows, call.feeds);
      if (batch.length > 0 && (full || !this.options.enabled)) break;
      batch.push(call);
      rows += call.rows;
    }
    this.#queue = this.#queue.filter((call) => !batch.includes(call));
    for (const call of batch) this.#dequeued(call);
    return batch;
  }

  #pump(): void {
    this.#dropAborted();
    if (this.#running || this.#queue.length === 0) return;
    const sameKeyRows = this.#queue.filter((c) => c.key === this.#queue[0].key).reduce(
      (n, c) => n + c.rows,
      0,
    );
    const waited = performance.now() - this.#queue[0].arrived;
    // nothing else is coming when every open track has queued its call
    const allQueued = this.#waiting === 0 && this.#tracks.size > 0;
    if (
      this.options.enabled && !allQueued && sameKeyRows < this.options.maxRows &&
      waited < this.options.maxWaitMs
    ) {
      this.#schedule(this.options.maxWaitMs - waited);
      return;
    }
    const batch = this.#takeBatch();
    this.#running = true;
    this.#inFlight = this.#execute(batch).finally(() => {
      this.#running = false;
      this.#inFlight = undefined;
      this.#schedule();
    });
  }

  async #execute(batch: PendingCall<Row>[]): Promise<void> {
    const rows = batch.reduce((n, c) => n + c.rows, 0);
    const tags = [...new Set(batch.map((c) => c.tag).filter((t) => t !== undefined))];
    const links: Link[] = batch.filter((c) => c.span).map((c) => ({ context: c.span!.spanContext() }));
    const span = startSpan(`${this.name}.run`, undefined, {
      "batch.rows": rows,
      "batch.requests": batch.length,
      ...(tags.length ? { "batch.timesteps": tags.join(",") } : {}),
    }, links);
    try {
      await this.#runAndResolve(batch, rows);
    } catch (error) {
      if (batch.length === 1) {
        batch[0].reject(error);
        return;
      }
      // One call's rows (say, its adapters) can fail a whole run: run each call alone, so only
      // the calls that fail by themselves fail.
      span.setAttribute("batch.split", true);
      for (const call of batch) {
        await this.#runAndResolve([call], call.rows).catch((e) => call.reject(e));
      }
    } finally {
      span.end();
    }
  }

  /** One `run` over the calls' concatenated rows; each call resolved with its own rows. */
  async #runAndResolve(batch: PendingCall<Row>[], rows: number): Promise<void> {
    const started = performance.now();
    const rowData = batch.flatMap((c): readonly (Row | undefined)[] =>
      c.rowData ?? new Array(c.rows).fill(undefined)
    );
    const outputs = await this.run(
      batch.length === 1 ? batch[0].feeds : concatFeeds(batch.map((c) => c.feeds)),
      rowData,
    );
    this.stats.runs++;
    this.stats.rows += rows;
    this.stats.calls += batch.length;
    const seconds = (performance.now() - started) / 1000;
    let offset = 0;
    for (const call of batch) {
      call.resolve(batch.length === 1 ? outputs : sliceFeeds(outputs, offset, call.rows, rows));
      offset += call.rows;
    }
    for (const observe of this.observers) {
      try {
        observe(rows, seconds);
      } catch (error) {
        console.error(`${this.name} run observer failed:`, error); // an observer never fails the run
      }
    }
  }
}

function concatFeeds(all: Feeds[]): Feeds {
  const out: Feeds = {};
  for (const name of Object.keys(all[0])) {
    const parts = all.map((f) => f[name]);
    const first = parts[0];
    const length = parts.reduce((n, t) => n + t.data.length, 0);
    const data = new (first.data.constructor as { new (n: number): TypedArray })(length);
    let offset = 0;
    for (const t of parts) {
      data.set(t.data as any, offset);
      offset += t.data.length;
    }
    const rows = parts.reduce((n, t) => n + t.dims[0], 0);
    out[name] = new ort.Tensor(first.type, data, [rows, ...first.dims.slice(1)]);
  }
  return out;
}

function sliceFeeds(outputs: Feeds, start: number, count: number, totalRows: number): Feeds {
  const out: Feeds = {};
  for (const [name, t] of Object.entries(outputs)) {
    const rowSize = t.data.length / totalRows;
    const data = (t.data as TypedArray).slice(start * rowSize, (start + count) * rowSize);
    out[name] = new ort.Tensor(t.type, data, [count, ...t.dims.slice(1)]);
  }
  return out;
}
