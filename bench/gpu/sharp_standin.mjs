/**
 * A stand-in for sharp in the GPU benchmark's bundle, used only when sharp's libvips (6 MB compressed)
 * does not fit the device's 64 MiB carry beside Deno and ONNX Runtime (bench/gpu/pack.sh decides and
 * says so; the benchmark reports which encoder served). It does what /generate needs of sharp, raw RGB
 * to PNG, writing a valid PNG whose image data is stored, not deflated (filter 0, stored deflate
 * blocks): no compression work on the event loop, as sharp does its encoding on libuv's threads. Every
 * other operation throws, naming itself.
 */
import { Buffer } from "node:buffer";

const CRC_TABLE = new Int32Array(256);
for (let n = 0; n < 256; n++) {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  CRC_TABLE[n] = c;
}

function crc32(bytes, start, end) {
  let c = -1;
  for (let i = start; i < end; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ -1) >>> 0;
}

function adler32(bytes) {
  let a = 1, b = 0;
  const n = bytes.length;
  for (let i = 0; i < n;) {
    const end = Math.min(n, i + 3800); // sums stay below 2^32 before the modulo
    for (; i < end; i++) {
      a += bytes[i];
      b += a;
    }
    a %= 65521;
    b %= 65521;
  }
  return ((b << 16) | a) >>> 0;
}

const COLOR_TYPES = { 1: 0, 2: 4, 3: 2, 4: 6 };

/** A PNG of raw 8-bit pixels, rows top to bottom, `channels` interleaved. */
export function encodePngStored(data, width, height, channels) {
  const stride = width * channels;
  const scanlines = new Uint8Array(height * (stride + 1));
  for (let y = 0; y < height; y++) {
    scanlines.set(data.subarray(y * stride, (y + 1) * stride), y * (stride + 1) + 1);
  }
  const blocks = Math.max(1, Math.ceil(scanlines.length / 65535));
  const zlib = new Uint8Array(2 + scanlines.length + 5 * blocks + 4);
  zlib[0] = 0x78;
  zlib[1] = 0x01;
  let at = 2;
  for (let i = 0; i < blocks; i++) {
    const from = i * 65535, len = Math.min(65535, scanlines.length - from);
    zlib[at] = i === blocks - 1 ? 1 : 0;
    zlib[at + 1] = len & 0xff;
    zlib[at + 2] = len >>> 8;
    zlib[at + 3] = ~len & 0xff;
    zlib[at + 4] = (~len >>> 8) & 0xff;
    zlib.set(scanlines.subarray(from, from + len), at + 5);
    at += 5 + len;
  }
  new DataView(zlib.buffer).setUint32(at, adler32(scanlines));

  const ihdr = new Uint8Array(13);
  const header = new DataView(ihdr.buffer);
  header.setUint32(0, width);
  header.setUint32(4, height);
  ihdr[8] = 8;
  ihdr[9] = COLOR_TYPES[channels];
  const chunks = [["IHDR", ihdr], ["IDAT", zlib], ["IEND", new Uint8Array(0)]];
  const total = 8 + chunks.reduce((sum, [, body]) => sum + 12 + body.length, 0);
  const png = new Uint8Array(total);
  const view = new DataView(png.buffer);
  png.set([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  let pos = 8;
  for (const [type, body] of chunks) {
    view.setUint32(pos, body.length);
    for (let i = 0; i < 4; i++) png[pos + 4 + i] = type.charCodeAt(i);
    png.set(body, pos + 8);
    view.setUint32(pos + 8 + body.length, crc32(png, pos + 4, pos + 8 + body.length));
    pos += 12 + body.length;
  }
  return png;
}

function unsupported(name) {
  return () => {
    throw new Error(`sharp stand-in (GPU benchmark bundle): ${name} is not available; only raw to PNG is`);
  };
}

class StandIn {
  #data;
  #raw;
  #format = "png";
  constructor(input, options) {
    if (!options?.raw) unsupported("decoding an encoded image")();
    this.#data = input instanceof Uint8Array ? input : new Uint8Array(input);
    this.#raw = options.raw;
  }
  png() {
    this.#format = "png";
    return this;
  }
  webp() {
    this.#format = "webp";
    return this;
  }
  jpeg() {
    this.#format = "jpeg";
    return this;
  }
  toBuffer() {
    if (this.#format !== "png") {
      return Promise.reject(new Error(`sharp stand-in: ${this.#format} output is not available`));
    }
    const { width, height, channels } = this.#raw;
    const png = encodePngStored(this.#data, width, height, channels);
    return Promise.resolve(Buffer.from(png.buffer, png.byteOffset, png.byteLength));
  }
}
for (
  const name of ["metadata", "raw", "resize", "removeAlpha", "toColourspace", "composite", "gif", "extract"]
) {
  StandIn.prototype[name] = unsupported(name);
}

export default function sharp(input, options) {
  return new StandIn(input, options);
}
sharp.standIn = true;
sharp.versions = { standIn: "stored PNG" };
