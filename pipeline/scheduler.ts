/**
 * Noise schedule and samplers. Schedulers are small stateless objects over one request's latent:
 * `timesteps` to walk, `initNoiseSigma` to scale x_T by, `scaleModelInput` before the UNet and
 * `step` after it (the diffusers convention), so a denoising loop reads the same for every one.
 */
export interface ScheduleConfig {
  num_train_timesteps: number;
  beta_start: number;
  beta_end: number;
  beta_schedule: "scaled_linear" | "linear";
  steps_offset?: number;
  set_alpha_to_one?: boolean;
  prediction_type?: string;
}

export const SCHEDULER_NAMES = ["ddim", "euler"] as const;
export type SchedulerName = typeof SCHEDULER_NAMES[number];

export function alphasCumprod(config: ScheduleConfig): Float64Array {
  const n = config.num_train_timesteps;
  const out = new Float64Array(n);
  let product = 1;
  for (let i = 0; i < n; i++) {
    const frac = n === 1 ? 0 : i / (n - 1);
    const beta = config.beta_schedule === "scaled_linear"
      ? (Math.sqrt(config.beta_start) + frac * (Math.sqrt(config.beta_end) - Math.sqrt(config.beta_start))) **
        2
      : config.beta_start + frac * (config.beta_end - config.beta_start);
    product *= 1 - beta;
    out[i] = product;
  }
  return out;
}

/** 'leading' spacing: for 50 of 1000 with offset 1 gives 981, 961, ..., 1. */
export function leadingTimesteps(config: ScheduleConfig, steps: number): number[] {
  const ratio = Math.floor(config.num_train_timesteps / steps);
  return Array.from({ length: steps }, (_, i) => (steps - 1 - i) * ratio + (config.steps_offset ?? 0));
}

export interface Scheduler {
  readonly timesteps: readonly number[];
  readonly initNoiseSigma: number;
  scaleModelInput(latent: Float32Array, index: number): Float32Array;
  step(latent: Float32Array, eps: Float32Array, index: number): Float32Array;
  /** A clean latent noised to the level of step `index`, in this sampler's own space (img2img's start). */
  addNoise(x0: Float32Array, noise: Float32Array, index: number): Float32Array;
}

/**
 * DDIM with eta = 0 (deterministic): Song, Meng and Ermon, "Denoising Diffusion Implicit Models",
 * ICLR 2021, eq. 12 with sigma_t = 0, on diffusers' DDIMScheduler timesteps ('leading' spacing).
 */
export class DdimScheduler implements Scheduler {
  readonly timesteps: number[];
  readonly initNoiseSigma = 1;
  readonly #alphas: Float64Array;
  readonly #finalAlpha: number;
  readonly #ratio: number;

  constructor(config: ScheduleConfig, steps: number) {
    this.#alphas = alphasCumprod(config);
    this.#finalAlpha = config.set_alpha_to_one ? 1 : this.#alphas[0];
    this.#ratio = Math.floor(config.num_train_timesteps / steps);
    this.timesteps = leadingTimesteps(config, steps);
  }

  alphaAt(t: number): number {
    return t >= 0 ? this.#alphas[t] : this.#finalAlpha;
  }

  scaleModelInput(latent: Float32Array): Float32Array {
    return latent;
  }

  step(latent: Float32Array, eps: Float32Array, index: number): Float32Array {
    const t = this.timesteps[index];
    return ddimMove(latent, eps, this.alphaAt(t), this.alphaAt(t - this.#ratio));
  }

  addNoise(x0: Float32Array, noise: Float32Array, index: number): Float32Array {
    const a = this.alphaAt(this.timesteps[index]);
    const signal = Math.sqrt(a), spread = Math.sqrt(1 - a);
    return x0.map((v, i) => signal * v + spread * noise[i]);
  }
}

/**
 * One deterministic DDIM move from noise level a_from to a_to using the predicted noise:
 * x0 = (x - sqrt(1-a_from) eps) / sqrt(a_from);  x' = sqrt(a_to) x0 + sqrt(1-a_to) eps.
 * Sampling moves to a smaller t; DDIM inversion is the same move to a larger t.
 */
export function ddimMove(x: Float32Array, eps: Float32Array, aFrom: number, aTo: number): Float32Array {
  const out = new Float32Array(x.length);
  const sqrtFrom = Math.sqrt(aFrom), sqrtOneMinusFrom = Math.sqrt(1 - aFrom);
  const sqrtTo = Math.sqrt(aTo), sqrtOneMinusTo = Math.sqrt(1 - aTo);
  for (let i = 0; i < x.length; i++) {
    const x0 = (x[i] - sqrtOneMinusFrom * eps[i]) / sqrtFrom;
    out[i] = sqrtTo * x0 + sqrtOneMinusTo * eps[i];
  }
  return out;
}

/** Euler (diffusers' EulerDiscreteScheduler, 'leading' spacing): integrates in sigma space. */
export class EulerScheduler implements Scheduler {
  readonly timesteps: number[];
  readonly initNoiseSigma: number;
  readonly #sigmas: number[];

  constructor(config: ScheduleConfig, steps: number) {
    const alphas = alphasCumprod(config);
    this.timesteps = leadingTimesteps(config, steps);
    this.#sigmas = [...this.timesteps.map((t) => Math.sqrt((1 - alphas[t]) / alphas[t])), 0];
    this.initNoiseSigma = Math.sqrt(this.#sigmas[0] ** 2 + 1);
  }

  scaleModelInput(latent: Float32Array, index: number): Float32Array {
    const scale = 1 / Math.sqrt(this.#sigmas[index] ** 2 + 1);
    return latent.map((v) => v * scale);
  }

  step(latent: Float32Array, eps: Float32Array, index: number): Float32Array {
    const dt = this.#sigmas[index + 1] - this.#sigmas[index];
    return latent.map((v, i) => v + eps[i] * dt); // derivative (x - x0) / sigma is eps
  }

  addNoise(x0: Float32Array, noise: Float32Array, index: number): Float32Array {
    const sigma = this.#sigmas[index];
    return x0.map((v, i) => v + sigma * noise[i]);
  }
}

export function createScheduler(name: SchedulerName, config: ScheduleConfig, steps: number): Scheduler {
  return name === "euler" ? new EulerScheduler(config, steps) : new DdimScheduler(config, steps);
}
