/** Bounded admission: at most `limit` requests in flight; the rest are told when to come back. */
import { ApiError } from "./errors.ts";

export class Admission {
  #active = 0;
  #recentSeconds = 1;

  constructor(readonly limit: number) {}

  get active(): number {
    return this.#active;
  }

  /** Reserves a slot or throws 429 with a Retry-After based on recent request durations. */
  acquire(): () => void {
    if (this.#active >= this.limit) {
      const retry = String(Math.max(1, Math.ceil(this.#recentSeconds)));
      throw new ApiError(
        429,
        "queue_full",
        `${this.#active} requests in flight; retry in ${retry} s`,
        undefined,
        {
          "Retry-After": retry,
        },
      );
    }
    this.#active++;
    const started = performance.now();
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#active--;
      this.#recentSeconds = 0.8 * this.#recentSeconds + 0.2 * (performance.now() - started) / 1000;
    };
  }

  /**
   * Admits a request (429 when full), then runs `prepare` under its slot: the request's own costly
   * work before the engine's (decoding its images), so that it counts against the limit too. The
   * slot is freed if `prepare` fails; otherwise by `release`.
   */
  async admit<P>(prepare: () => Promise<P>): Promise<{ prepared: P; release: () => void }> {
    const release = this.acquire();
    try {
      return { prepared: await prepare(), release };
    } catch (error) {
      release();
      throw error;
    }
  }
}
