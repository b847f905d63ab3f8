import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { gaussianNoise } from "../pipeline/rng.ts";
import {
  alphasCumprod,
  DdimScheduler,
  EulerScheduler,
  leadingTimesteps,
  type ScheduleConfig,
} from "../pipeline/scheduler.ts";
import { assertClose } from "./helpers.ts";

const SD15: ScheduleConfig = {
  num_train_timesteps: 1000,
  beta_start: 0.00085,
  beta_end: 0.012,
  beta_schedule: "scaled_linear",
  steps_offset: 1,
  set_alpha_to_one: false,
};

Deno.test("noise: same stream as training/noise.py and a standard normal", () => {
  // gaussian_noise(42, 4) printed by training/noise.py
  assertEquals(Array.from(gaussianNoise(42, 4)), [
    -0.9561622142791748,
    0.32207024097442627,
    -0.27302610874176025,
    -0.4946727454662323,
  ]);
  const n = gaussianNoise(7, 200_000);
  const mean = n.reduce((a, b) => a + b, 0) / n.length;
  const std = Math.sqrt(n.reduce((a, b) => a + (b - mean) ** 2, 0) / n.length);
  assert(Math.abs(mean) < 0.01 && Math.abs(std - 1) < 0.01, `mean ${mean} std ${std}`);
  assertEquals(Array.from(gaussianNoise(7, 5)), Array.from(gaussianNoise(7, 6).subarray(0, 5)));
});

Deno.test("schedule: SD 1.5 alphas and the 50-step DDIM timesteps 981..1", () => {
  const a = alphasCumprod(SD15);
  assertClose([a[0], a[999]], [1 - 0.00085, 0.004660098513077241], 1e-12, "alphas_cumprod");
  const t = leadingTimesteps(SD15, 50);
  assertEquals([t[0], t[1], t[49], t.length], [981, 961, 1, 50]);
});

Deno.test("DDIM: a step with the true noise lands exactly on the next marginal", () => {
  const ddim = new DdimScheduler(SD15, 50);
  const x0 = Float32Array.from({ length: 16 }, (_, i) => Math.sin(i));
  const eps = gaussianNoise(3, 16);
  const noised = (t: number) => {
    const a = ddim.alphaAt(t);
    return x0.map((v, i) => Math.sqrt(a) * v + Math.sqrt(1 - a) * eps[i]);
  };
  assertClose(ddim.step(noised(981), eps, 0), noised(961), 1e-5, "x_961");
  assertClose(ddim.step(noised(1), eps, 49), noised(0), 1e-5, "x_final");
});

Deno.test("Euler: scaled input and a step with the true noise reach x0 at sigma 0", () => {
  const euler = new EulerScheduler(SD15, 10);
  const x0 = Float32Array.from({ length: 8 }, (_, i) => i / 8);
  const eps = gaussianNoise(5, 8);
  const a = alphasCumprod(SD15);
  const sigmaLast = Math.sqrt((1 - a[1]) / a[1]);
  const xLast = x0.map((v, i) => v + sigmaLast * eps[i]);
  assertClose(euler.step(xLast, eps, 9), x0, 1e-6, "x0");
  assertEquals(euler.timesteps[0], 901);
  assertClose([euler.initNoiseSigma], [Math.sqrt((1 - a[901]) / a[901] + 1)], 1e-9, "init sigma");
});
