/** Image similarity on 8-bit RGB: PSNR (dB) and SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, per channel, averaged). */
import type { RgbImage } from "./image.ts";

export function psnr(a: RgbImage, b: RgbImage): number {
  let sum = 0;
  for (let i = 0; i < a.data.length; i++) sum += (a.data[i] - b.data[i]) ** 2;
  const mse = sum / a.data.length;
  return mse === 0 ? Infinity : 10 * Math.log10((255 * 255) / mse);
}

function gaussianWindow(size = 11, sigma = 1.5): Float64Array {
  const w = new Float64Array(size);
  const half = (size - 1) / 2;
  let total = 0;
  for (let i = 0; i < size; i++) total += w[i] = Math.exp(-((i - half) ** 2) / (2 * sigma * sigma));
  return w.map((v) => v / total);
}

/** Separable Gaussian filter with "valid" borders. */
function blur(
  plane: Float64Array,
  width: number,
  height: number,
  w: Float64Array,
): { data: Float64Array; width: number; height: number } {
  const k = w.length, ow = width - k + 1, oh = height - k + 1;
  const tmp = new Float64Array(ow * height);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < ow; x++) {
      let s = 0;
      for (let i = 0; i < k; i++) s += w[i] * plane[y * width + x + i];
      tmp[y * ow + x] = s;
    }
  }
  const out = new Float64Array(ow * oh);
  for (let y = 0; y < oh; y++) {
    for (let x = 0; x < ow; x++) {
      let s = 0;
      for (let i = 0; i < k; i++) s += w[i] * tmp[(y + i) * ow + x];
      out[y * ow + x] = s;
    }
  }
  return { data: out, width: ow, height: oh };
}

export function ssim(a: RgbImage, b: RgbImage): number {
  const { width, height } = a;
  const w = gaussianWindow(Math.min(11, width, height));
  const c1 = (0.01 * 255) ** 2, c2 = (0.03 * 255) ** 2;
  let total = 0;
  for (let c = 0; c < 3; c++) {
    const x = new Float64Array(width * height), y = new Float64Array(width * height);
    for (let i = 0; i < width * height; i++) {
      x[i] = a.data[i * 3 + c];
      y[i] = b.data[i * 3 + c];
    }
    const mx = blur(x, width, height, w).data, my = blur(y, width, height, w).data;
    const xx = blur(x.map((v) => v * v), width, height, w).data;
    const yy = blur(y.map((v) => v * v), width, height, w).data;
    const xy = blur(x.map((v, i) => v * y[i]), width, height, w).data;
    let sum = 0;
    for (let i = 0; i < mx.length; i++) {
      const vx = xx[i] - mx[i] ** 2, vy = yy[i] - my[i] ** 2, cov = xy[i] - mx[i] * my[i];
      sum += ((2 * mx[i] * my[i] + c1) * (2 * cov + c2)) / ((mx[i] ** 2 + my[i] ** 2 + c1) * (vx + vy + c2));
    }
    total += sum / mx.length;
  }
  return total / 3;
}
