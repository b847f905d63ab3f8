/**
 * Images sent by clients: base64 or a data URL of PNG, JPEG or WebP, decoded with sharp and fitted
 * to the size the model works at. Failures of the image say which of three things went wrong;
 * any other failure is the server's and is thrown as it is.
 */
import sharp from "sharp";
import type { RgbImage } from "./image.ts";

export const FIT_MODES = ["cover", "contain", "fill"] as const;
export type FitMode = typeof FIT_MODES[number];
const ACCEPTED = new Set(["png", "jpeg", "webp"]);

export class ImageInputError extends Error {
  constructor(readonly kind: "undecodable" | "too_large" | "unsupported", message: string) {
    super(message);
  }
}

/**
 * What sharp and libvips' loaders say about bytes that are not a whole image of an accepted kind
 * (not an image, a corrupt header, truncated or damaged data). Any other failure (a bad argument,
 * memory) is the server's, and propagates as it is.
 */
const FAULT_OF_THE_BYTES =
  /^(Input buffer |Input file |VipsJpeg|vipspng|webp2vips|VipsForeignLoad|Warning treated as error)|^\w+load(_buffer)?:/;

export interface ImageLimits {
  maxBytes: number;
  maxPixels: number;
}

export function base64Bytes(text: string): Uint8Array {
  const payload = text.startsWith("data:") ? text.slice(text.indexOf(",") + 1) : text;
  if (!/^[A-Za-z0-9+/\s]*={0,2}\s*$/.test(payload)) {
    throw new ImageInputError("undecodable", "not valid base64");
  }
  try {
    return Uint8Array.from(atob(payload.replace(/\s+/g, "")), (ch) => ch.charCodeAt(0));
  } catch {
    throw new ImageInputError("undecodable", "not valid base64");
  }
}

export async function readImageInput(
  text: string,
  width: number,
  height: number,
  fit: FitMode,
  limits: ImageLimits,
): Promise<RgbImage> {
  if (text.length > Math.ceil(limits.maxBytes * 4 / 3) + 128) {
    throw new ImageInputError("too_large", `the image exceeds ${limits.maxBytes} bytes`);
  }
  const bytes = base64Bytes(text);
  if (bytes.length > limits.maxBytes) {
    throw new ImageInputError(
      "too_large",
      `the image is ${bytes.length} bytes; the limit is ${limits.maxBytes}`,
    );
  }
  if (bytes.length === 0) throw new ImageInputError("undecodable", "the image is empty");
  let meta;
  try {
    meta = await sharp(bytes, { limitInputPixels: limits.maxPixels }).metadata();
  } catch (error) {
    const message = String((error as Error).message ?? error);
    if (/pixel limit/i.test(message)) {
      throw new ImageInputError("too_large", `the image has more than ${limits.maxPixels} pixels`);
    }
    if (!FAULT_OF_THE_BYTES.test(message)) throw error;
    throw new ImageInputError("undecodable", "the bytes are not an image sharp can decode");
  }
  if (!meta.format || !ACCEPTED.has(meta.format)) {
    throw new ImageInputError(
      "unsupported",
      `${meta.format ?? "this"} images are not accepted: send PNG, JPEG or WebP`,
    );
  }
  if ((meta.width ?? 0) * (meta.height ?? 0) > limits.maxPixels) {
    throw new ImageInputError(
      "too_large",
      `the image has ${meta.width}x${meta.height} pixels; the limit is ${limits.maxPixels}`,
    );
  }
  // Built outside the try: sharp checks its arguments here, and a bad one is the server's fault.
  const pipeline = sharp(bytes, { limitInputPixels: limits.maxPixels })
    .rotate() // honour EXIF orientation
    .removeAlpha()
    .toColourspace("srgb")
    .resize(width, height, { fit, position: "centre", background: { r: 0, g: 0, b: 0 } })
    .raw();
  try {
    const { data, info } = await pipeline.toBuffer({ resolveWithObject: true });
    return {
      width: info.width,
      height: info.height,
      data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
    };
  } catch (error) {
    if (!FAULT_OF_THE_BYTES.test(String((error as Error).message ?? error))) throw error;
    throw new ImageInputError("undecodable", "the image could not be decoded");
  }
}
