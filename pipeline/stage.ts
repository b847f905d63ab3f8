/**
 * A task's stages (text encoding, denoising, decoding, ...): each runs in a child span of the
 * task's span and adds its wall time to the task's timings, which responses report.
 */
import { inSpan, type Span } from "../telemetry.ts";

/** Milliseconds per stage, keyed `<stage>_ms`. */
export interface Timings {
  [stage: string]: number;
}

/** What every step of a task carries: cancellation, its span, progress, and its stages' clock. */
export interface TaskContext {
  signal?: AbortSignal;
  span?: Span;
  onProgress?: (step: number, total: number) => void;
  clock?: StageClock;
}

/** Timing keys that predate the rule (`vae.decode` was always reported as `decode_ms`). */
const TIMING_KEYS: Record<string, string> = { "vae.decode": "decode_ms" };

/** A stage's key in the timings: its span name with `_` for `.`, and `_ms`. */
export function timingKey(stage: string): string {
  return TIMING_KEYS[stage] ?? `${stage.replaceAll(".", "_")}_ms`;
}

/**
 * The wall time a task spends in each stage. Runs of a stage that overlap (the frames of an
 * interpolation decoded at once, its two endpoints inverted at once) count once, runs one after
 * the other add up.
 */
export class StageClock {
  readonly #spent: Map<string, number>;
  readonly #open = new Map<string, { runs: number; since: number }>();

  /** `timings`: what the task's stages took before (an engine's, when the API adds its own). */
  constructor(timings: Timings = {}) {
    this.#spent = new Map(Object.entries(timings));
  }

  /** Starts a run of `key`; the function returned ends it. */
  start(key: string): () => void {
    const open = this.#open.get(key) ?? { runs: 0, since: performance.now() };
    open.runs++;
    this.#open.set(key, open);
    return () => {
      if (--open.runs > 0) return;
      this.#open.delete(key);
      this.#spent.set(key, (this.#spent.get(key) ?? 0) + performance.now() - open.since);
    };
  }

  /** The time spent so far in each stage, to a tenth of a millisecond. */
  timings(): Timings {
    return Object.fromEntries([...this.#spent].map(([key, ms]) => [key, Math.round(ms * 10) / 10]));
  }
}

/** Runs `fn` as the stage `name` of the task `ctx`: its span, and its time on the task's clock. */
export function stage<T>(
  ctx: Pick<TaskContext, "span" | "clock">,
  name: string,
  fn: () => Promise<T> | T,
  attributes?: Record<string, string | number | boolean>,
): Promise<T> {
  return inSpan(name, ctx.span, async () => {
    const stop = ctx.clock?.start(timingKey(name));
    try {
      return await fn();
    } finally {
      stop?.();
    }
  }, attributes);
}
