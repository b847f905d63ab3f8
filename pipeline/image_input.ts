/**
 * Images sent by clients: base64 or a data URL of PNG, JPEG or WebP, decoded with sharp and fitted
 * to the size the model works at. The format is told from the bytes' signature before sharp sees
 * them (sharp also reads SVG, TIFF, HEIF, GIF...: none of those loaders is reached), a data URL's
 * type must agree with it, and the size read from the header is bounded before any pixel is decoded.
 * Failures of the image say which of three things went wrong; any other failure is the server's
 * and is thrown as it is.
 */
import sharp from "sharp";
import type { RgbImage } from "./image.ts";

export const FIT_MODES = ["cover", "contain", "fill"] as const;
export type FitMode = typeof FIT_MODES[number];

/**
 * The most elongated image accepted, longer side over shorter: the API's own most elongated size,
 * 4096 x 8. It bounds decoding, whose cost grows with rows as well as pixels (1 x 16777216 pixels
 * took 2 s where 4096 x 4096 takes 0.1 s), and the intermediate that fit "cover" scales to before
 * it crops (libvips refuses one past its coordinate limit).
 */
export const MAX_ASPECT_RATIO = 512;

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

const ascii = (bytes: Uint8Array, from: number, to: number) =>
  String.fromCharCode(...bytes.subarray(from, to));
const startsWith = (bytes: Uint8Array, prefix: number[]) => prefix.every((b, i) => bytes[i] === b);

/** The accepted formats: sharp's name, the MIME type a data URL gives them, and their signature. */
const ACCEPTED = {
  png: {
    mime: "image/png",
    name: "PNG",
    is: (b: Uint8Array) => startsWith(b, [0x89, 0x50, 0x4e, 0x47, 13, 10, 26, 10]),
  },
  jpeg: { mime: "image/jpeg", name: "JPEG", is: (b: Uint8Array) => startsWith(b, [0xff, 0xd8, 0xff]) },
  webp: {
    mime: "image/webp",
    name: "WebP",
    is: (b: Uint8Array) => ascii(b, 0, 4) === "RIFF" && ascii(b, 8, 12) === "WEBP",
  },
} as const;
type Accepted = keyof typeof ACCEPTED;
/** MIME types clients use for the accepted formats. */
const MIME_FORMATS: Record<string, Accepted> = {
  "image/png": "png",
  "image/jpeg": "jpeg",
  "image/jpg": "jpeg",
  "image/pjpeg": "jpeg",
  "image/webp": "webp",
};

/** Other formats, recognised by their signature so that they get 415 by name. */
const REFUSED: [string, (b: Uint8Array) => boolean][] = [
  ["GIF", (b) => ascii(b, 0, 4) === "GIF8"],
  ["BMP", (b) => ascii(b, 0, 2) === "BM" && b.length >= 26],
  ["ICO", (b) => startsWith(b, [0, 0, 1, 0]) && b[4] + b[5] > 0],
  ["CUR", (b) => startsWith(b, [0, 0, 2, 0]) && b[4] + b[5] > 0],
  [
    "JPEG 2000",
    (b) =>
      startsWith(b, [0, 0, 0, 12, 0x6a, 0x50, 0x20, 0x20, 13, 10, 0x87, 10]) ||
      startsWith(b, [0xff, 0x4f, 0xff, 0x51]),
  ],
  [
    "JPEG XL",
    (b) =>
      startsWith(b, [0xff, 0x0a]) || startsWith(b, [0, 0, 0, 12, 0x4a, 0x58, 0x4c, 0x20, 13, 10, 0x87, 10]),
  ],
  [
    "TIFF",
    (b) =>
      startsWith(b, [0x49, 0x49, 0x2a, 0]) || startsWith(b, [0x4d, 0x4d, 0, 0x2a]) ||
      startsWith(b, [0x49, 0x49, 0x2b, 0]) || startsWith(b, [0x4d, 0x4d, 0, 0x2b]),
  ],
  [
    "HEIF",
    (b) => ascii(b, 4, 8) === "ftyp" && /^(heic|heix|hevc|hevx|heim|heis|mif1|msf1)$/.test(ascii(b, 8, 12)),
  ],
  ["AVIF", (b) => ascii(b, 4, 8) === "ftyp" && /^avi[fs]$/.test(ascii(b, 8, 12))],
  ["PSD", (b) => ascii(b, 0, 4) === "8BPS"],
  ["QOI", (b) => ascii(b, 0, 4) === "qoif"],
  ["PDF", (b) => ascii(b, 0, 5) === "%PDF-"],
  ["OpenEXR", (b) => startsWith(b, [0x76, 0x2f, 0x31, 0x01])],
  ["Radiance HDR", (b) => ascii(b, 0, 2) === "#?"],
  ["FITS", (b) => ascii(b, 0, 9) === "SIMPLE  ="],
  ["PNM", (b) => /^P[1-7]\s$/.test(ascii(b, 0, 3))],
  ["SVG", (b) => /^(\ufeff|\xef\xbb\xbf)?\s*<(\?xml|svg|!DOCTYPE svg)/i.test(ascii(b, 0, 256))],
];

/** The image's format from its first bytes: an accepted one, another's name, or undefined. */
function formatOf(bytes: Uint8Array): { accepted?: Accepted; other?: string } {
  for (const [format, { is }] of Object.entries(ACCEPTED)) {
    if (is(bytes)) return { accepted: format as Accepted };
  }
  return { other: REFUSED.find(([, is]) => is(bytes))?.[0] };
}

export interface ImageLimits {
  maxBytes: number;
  maxPixels: number;
}

/** The bytes of base64 or of a base64 data URL, and the MIME type the data URL declares (lower case). */
export function base64Bytes(text: string): { bytes: Uint8Array; declared?: string } {
  let payload = text, declared: string | undefined;
  if (/^data:/i.test(text)) {
    const comma = text.indexOf(",");
    const header = comma < 0 ? "" : text.slice(5, comma);
    const params = header.split(";");
    if (comma < 0 || params.length < 2 || params[params.length - 1].trim().toLowerCase() !== "base64") {
      throw new ImageInputError("undecodable", "a data URL must carry base64: data:image/png;base64,...");
    }
    declared = params[0].trim().toLowerCase() || undefined;
    payload = text.slice(comma + 1);
  }
  if (!/^[A-Za-z0-9+/\s]*={0,2}\s*$/.test(payload)) {
    throw new ImageInputError("undecodable", "not valid base64");
  }
  try {
    return { bytes: Uint8Array.fromBase64(payload), declared };
  } catch {
    throw new ImageInputError("undecodable", "not valid base64");
  }
}

/** The accepted format of the bytes, checked against what a data URL declares; else why not. */
function acceptedFormat(bytes: Uint8Array, declared: string | undefined): Accepted {
  if (declared !== undefined && !(declared in MIME_FORMATS)) {
    throw new ImageInputError(
      "unsupported",
      `the data URL's type is ${declared.slice(0, 64)}: send image/png, image/jpeg or image/webp`,
    );
  }
  const { accepted, other } = formatOf(bytes);
  if (other) {
    throw new ImageInputError("unsupported", `${other} images are not accepted: send PNG, JPEG or WebP`);
  }
  if (!accepted) throw new ImageInputError("undecodable", "the bytes are not a PNG, JPEG or WebP image");
  if (declared !== undefined && MIME_FORMATS[declared] !== accepted) {
    throw new ImageInputError(
      "undecodable",
      `the data URL says ${declared} but the bytes are a ${ACCEPTED[accepted].name} image`,
    );
  }
  return accepted;
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
  const { bytes, declared } = base64Bytes(text);
  if (bytes.length > limits.maxBytes) {
    throw new ImageInputError(
      "too_large",
      `the image is ${bytes.length} bytes; the limit is ${limits.maxBytes}`,
    );
  }
  if (bytes.length === 0) throw new ImageInputError("undecodable", "the image is empty");
  const format = acceptedFormat(bytes, declared);
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
  if (meta.format !== format) {
    // the signature said one accepted format and the header another: damaged bytes
    throw new ImageInputError("undecodable", `the bytes are not a whole ${ACCEPTED[format].name} image`);
  }
  const w = meta.width ?? 0, h = meta.height ?? 0;
  if (w * h > limits.maxPixels) {
    throw new ImageInputError(
      "too_large",
      `the image has ${w}x${h} pixels; the limit is ${limits.maxPixels}`,
    );
  }
  if (Math.max(w, h) > MAX_ASPECT_RATIO * Math.min(w, h)) {
    throw new ImageInputError(
      "undecodable",
      `the image is ${w}x${h} pixels: its longer side may be at most ${MAX_ASPECT_RATIO} times its ` +
        `shorter (aspect ratio ${MAX_ASPECT_RATIO}:1, as 4096 x 8)`,
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
