/**
 * What one model run costs in memory, measured rather than guessed: at start each graph runs one row
 * at three latent sizes while the process's peak resident memory is read (Linux: VmHWM, reset through
 * /proc/self/clear_refs; freed heap memory handed back first), and the peaks are fitted to
 *
 *     bytes(rows, t) = rows * (a * t^2 + b * t) + c        t = latent positions (h * w)
 *
 * a is self-attention's score matrices (quadratic in positions), b the activations that grow with the
 * image, c what a run needs whatever its size. Batches are then formed, and requests admitted, against
 * a byte budget (see `MEMORY_BUDGET_BYTES`).
 */

export interface CostCurve {
  a: number;
  b: number;
  c: number;
}

/**
 * Headroom on every estimate. The fit is exact at the sizes it measured and meant to overestimate
 * beyond them, but a run also holds what the curve does not model (measured: a 896x896 guided run of
 * the embedded model peaked 3.5% above its curve); runs and requests are judged on the curve x 1.25.
 */
export const ESTIMATE_MARGIN = 1.25;

/** The graphs whose cost grows with the image. */
export type ImageGraph = "unet" | "vaeDecoder" | "vaeEncoder";

export interface MemoryPlan {
  budgetBytes: number;
  /** Measured per graph; undefined where the system does not report peak memory (no budget then). */
  costs?: Partial<Record<ImageGraph, CostCurve>>;
}

/** Pixels per latent position along each side. */
const VAE_FACTOR = 8;

/**
 * The largest single model run a request makes: `unetRows` UNet rows and `imageRows` VAE rows at
 * width x height pixels. Undefined when it fits the memory budget (or none is enforced), else the
 * bytes it needs.
 */
export function runTooLarge(
  memory: MemoryPlan,
  width: number,
  height: number,
  unetRows: number,
  imageRows: number,
): number | undefined {
  const { costs, budgetBytes } = memory;
  if (!costs) return undefined;
  const positions = (width / VAE_FACTOR) * (height / VAE_FACTOR);
  const needed = Math.max(
    costs.unet ? runBytes(costs.unet, unetRows, positions) : 0,
    costs.vaeDecoder ? runBytes(costs.vaeDecoder, imageRows, positions) : 0,
    costs.vaeEncoder ? runBytes(costs.vaeEncoder, imageRows, positions) : 0,
  );
  return needed > budgetBytes ? needed : undefined;
}

/** The curve's bytes for `rows` rows at `positions`, with the estimate's margin. */
export function runBytes(curve: CostCurve, rows: number, positions: number): number {
  return ESTIMATE_MARGIN * (rows * (curve.a * positions ** 2 + curve.b * positions) + curve.c);
}

/**
 * The curve through the two largest measured (positions, bytes of one row) points, with a and b
 * non-negative. Small runs are left out: there the allocator's reuse of freed memory hides most of a
 * run's cost, and the quadratic term, the one that matters for large images, is too small to see.
 * Where the points do not rise faster than linearly, the curve is the quadratic through the largest
 * point alone: an overestimate below it, never an underestimate above it.
 */
export function fitCurve(points: readonly { positions: number; bytes: number }[]): CostCurve {
  const [p1, p2] = [...points].sort((x, y) => x.positions - y.positions).slice(-2);
  const [r1, r2] = [p1.bytes / p1.positions, p2.bytes / p2.positions];
  const a = (r2 - r1) / (p2.positions - p1.positions), b = r1 - a * p1.positions;
  if (a > 0 && b >= 0) return { a, b, c: 0 };
  return { a: p2.bytes / p2.positions ** 2, b: 0, c: 0 };
}

const STATUS = "/proc/self/status";

/** Peak resident bytes since the last reset, or undefined where the system does not say. */
export function peakResidentBytes(): number | undefined {
  try {
    const kib = /VmHWM:\s+(\d+) kB/.exec(Deno.readTextFileSync(STATUS))?.[1];
    return kib === undefined ? undefined : Number(kib) * 1024;
  } catch {
    return undefined;
  }
}

export function residentBytes(): number {
  return Deno.memoryUsage().rss;
}

/** Starts a new peak at the current resident memory; false where the system cannot. */
export function resetPeak(): boolean {
  try {
    Deno.writeTextFileSync("/proc/self/clear_refs", "5");
    return true;
  } catch {
    return false;
  }
}

/**
 * glibc's malloc_trim: freed heap memory back to the system. glibc keeps freed blocks under its
 * (self-raising) mmap threshold for reuse, so after a large run the resident size would stay high;
 * and a measured run could reuse them unseen.
 */
export const releaseFreedMemory = (() => {
  try {
    const libc = Deno.dlopen("libc.so.6", { malloc_trim: { parameters: ["usize"], result: "i32" } });
    return () => void libc.symbols.malloc_trim(0n);
  } catch {
    return () => {};
  }
})();

/** The peak resident memory that `run` adds over what was resident before it. */
export async function measurePeak(run: () => Promise<unknown>): Promise<number | undefined> {
  releaseFreedMemory();
  if (!resetPeak()) return undefined;
  const before = residentBytes();
  await run();
  const peak = peakResidentBytes();
  return peak === undefined ? undefined : Math.max(0, peak - before);
}

/** Total memory of the machine (or the container's limit where one is set), in bytes. */
export function machineMemoryBytes(): number {
  const limit = (() => {
    try {
      const text = Deno.readTextFileSync("/sys/fs/cgroup/memory.max").trim();
      return text === "max" ? Infinity : Number(text);
    } catch {
      return Infinity;
    }
  })();
  return Math.min(limit, Deno.systemMemoryInfo().total);
}

export const GIB = 2 ** 30;
export const formatGiB = (bytes: number) => `${(bytes / GIB).toFixed(2)} GiB`;
