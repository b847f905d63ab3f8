/**
 * Seeded Gaussian noise, bit-for-bit the same as training/noise.py: mulberry32 for uniform
 * uint32s, Box-Muller in float64, stored as float32. Sharing it lets the Python reference and the
 * server start from the same x_T for the same seed.
 */
export function* uint32Stream(seed: number): Generator<number> {
  let state = seed >>> 0;
  while (true) {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1) >>> 0;
    t = (t ^ ((t + Math.imul(t ^ (t >>> 7), t | 61)) >>> 0)) >>> 0;
    yield (t ^ (t >>> 14)) >>> 0;
  }
}

export function gaussianNoise(seed: number, count: number): Float32Array {
  const out = new Float32Array(count);
  const stream = uint32Stream(seed);
  for (let i = 0; i < count; i += 2) {
    const u1 = (stream.next().value + 1) / 4294967296; // (0, 1]: log stays finite
    const u2 = stream.next().value / 4294967296;
    const r = Math.sqrt(-2 * Math.log(u1));
    out[i] = r * Math.cos(2 * Math.PI * u2);
    if (i + 1 < count) out[i + 1] = r * Math.sin(2 * Math.PI * u2);
  }
  return out;
}

export const MAX_SEED = 0xffffffff;

export function randomSeed(): number {
  return crypto.getRandomValues(new Uint32Array(1))[0];
}
