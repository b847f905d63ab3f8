/** Conversions between the VAE's float images and encoded image files, through sharp. */
import sharp from "sharp";

export const OUTPUT_FORMATS = ["png", "webp", "jpeg"] as const;
export type OutputFormat = typeof OUTPUT_FORMATS[number];
export const MIME_TYPES: Record<OutputFormat, string> = {
  png: "image/png",
  webp: "image/webp",
  jpeg: "image/jpeg",
};

/**
 * The most pixels per side each encoder writes: libwebp's 16383, libjpeg's 65500, GIF's 16-bit
 * sizes, libpng's default user limit. Past them sharp throws after the work is done, so requests
 * whose images would be larger are refused at validation.
 */
export const MAX_SIDE: Record<OutputFormat | "gif", number> = {
  png: 1_000_000,
  webp: 16383,
  jpeg: 65500,
  gif: 65535,
};
export const FORMAT_NAMES: Record<OutputFormat | "gif", string> = {
  png: "PNG",
  webp: "WebP",
  jpeg: "JPEG",
  gif: "GIF",
};

export interface RgbImage {
  width: number;
  height: number;
  /** Interleaved RGB bytes, row-major. */
  data: Uint8Array;
}

/** Row `index` of a VAE output [n, 3, H, W] in [-1, 1] to 8-bit RGB, rounding as diffusers does. */
export function pixelsToRgb(pixels: Float32Array, index: number, width: number, height: number): RgbImage {
  const plane = width * height;
  const base = index * 3 * plane;
  const data = new Uint8Array(plane * 3);
  for (let c = 0; c < 3; c++) {
    for (let i = 0; i < plane; i++) {
      const v = Math.min(1, Math.max(0, pixels[base + c * plane + i] / 2 + 0.5));
      data[i * 3 + c] = Math.round(v * 255);
    }
  }
  return { width, height, data };
}

/** 8-bit RGB to the VAE's input layout [3, H, W] in [-1, 1]. */
export function rgbToPixels(image: RgbImage): Float32Array {
  const plane = image.width * image.height;
  const out = new Float32Array(plane * 3);
  for (let i = 0; i < plane; i++) {
    for (let c = 0; c < 3; c++) out[c * plane + i] = image.data[i * 3 + c] / 127.5 - 1;
  }
  return out;
}

export async function encodeImage(image: RgbImage, format: OutputFormat): Promise<Uint8Array> {
  const pipeline = sharp(image.data, { raw: { width: image.width, height: image.height, channels: 3 } });
  const encoded = format === "png"
    ? pipeline.png()
    : format === "webp"
    ? pipeline.webp({ quality: 95 })
    : pipeline.jpeg({ quality: 95 });
  return new Uint8Array(await encoded.toBuffer());
}

export async function decodeImage(bytes: Uint8Array): Promise<RgbImage> {
  const { data, info } = await sharp(bytes).removeAlpha().toColourspace("srgb").raw().toBuffer({
    resolveWithObject: true,
  });
  return {
    width: info.width,
    height: info.height,
    data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
  };
}
