/**
 * safetensors parsing with full validation: header length, JSON, dtypes (F32, F16, BF16),
 * shapes, and every tensor's byte range inside the data section. Tensors come out as float32.
 */
export class SafetensorsError extends Error {}

export interface Tensor {
  shape: number[];
  data: Float32Array;
}

export interface SafetensorsFile {
  tensors: Map<string, Tensor>;
  metadata: Record<string, string>;
}

const DTYPE_BYTES: Record<string, number> = { F32: 4, F16: 2, BF16: 2 };
const MAX_HEADER_BYTES = 100 * 1024 * 1024;

function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const fraction = h & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

function decodeTensor(bytes: Uint8Array, dtype: string, count: number): Float32Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(count);
  if (dtype === "F32") { for (let i = 0; i < count; i++) out[i] = view.getFloat32(i * 4, true); }
  else if (dtype === "F16") {
    for (let i = 0; i < count; i++) out[i] = halfToFloat(view.getUint16(i * 2, true));
  } else {
    const scratch = new DataView(new ArrayBuffer(4));
    for (let i = 0; i < count; i++) {
      scratch.setUint32(0, view.getUint16(i * 2, true) << 16);
      out[i] = scratch.getFloat32(0);
    }
  }
  return out;
}

export function parseSafetensors(bytes: Uint8Array): SafetensorsFile {
  if (bytes.length < 8) throw new SafetensorsError("file is shorter than the 8-byte header length");
  const headerLength = new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
  if (headerLength > BigInt(Math.min(MAX_HEADER_BYTES, bytes.length - 8))) {
    throw new SafetensorsError(`header length ${headerLength} exceeds the file`);
  }
  const dataStart = 8 + Number(headerLength);
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, dataStart)));
  } catch {
    throw new SafetensorsError("header is not valid UTF-8 JSON");
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    throw new SafetensorsError("header is not a JSON object");
  }
  const dataLength = bytes.length - dataStart;
  const tensors = new Map<string, Tensor>();
  let metadata: Record<string, string> = {};
  const ranges: [number, number, string][] = [];
  for (const [name, entry] of Object.entries(header as Record<string, any>)) {
    if (name === "__metadata__") {
      metadata = entry ?? {};
      continue;
    }
    const { dtype, shape, data_offsets: offsets } = entry ?? {};
    if (!(dtype in DTYPE_BYTES)) {
      throw new SafetensorsError(`${name}: dtype ${dtype} is not F32, F16 or BF16`);
    }
    if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
      throw new SafetensorsError(`${name}: shape must be a list of non-negative integers`);
    }
    if (
      !Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isInteger(o) && o >= 0)
    ) {
      throw new SafetensorsError(`${name}: data_offsets must be two non-negative integers`);
    }
    const [begin, end] = offsets;
    const count = shape.reduce((a: number, b: number) => a * b, 1);
    if (begin > end || end > dataLength) {
      throw new SafetensorsError(`${name}: data_offsets [${begin}, ${end}] lie outside the data`);
    }
    if (end - begin !== count * DTYPE_BYTES[dtype]) {
      throw new SafetensorsError(`${name}: ${end - begin} bytes do not hold shape [${shape}] of ${dtype}`);
    }
    ranges.push([begin, end, name]);
    tensors.set(name, {
      shape,
      data: decodeTensor(bytes.subarray(dataStart + begin, dataStart + end), dtype, count),
    });
  }
  ranges.sort((a, b) => a[0] - b[0]);
  for (let i = 1; i < ranges.length; i++) {
    if (ranges[i][0] < ranges[i - 1][1]) {
      throw new SafetensorsError(`${ranges[i][2]} overlaps ${ranges[i - 1][2]}`);
    }
  }
  return { tensors, metadata };
}

/** Writes float32 tensors as a safetensors file (used by tests and tools). */
export function writeSafetensors(
  tensors: Record<string, Tensor>,
  metadata?: Record<string, string>,
): Uint8Array {
  const header: Record<string, unknown> = metadata ? { __metadata__: metadata } : {};
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    header[name] = { dtype: "F32", shape: t.shape, data_offsets: [offset, offset + t.data.length * 4] };
    offset += t.data.length * 4;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (json.length % 8)) % 8);
  const headerBytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + headerBytes.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  let pos = 8 + headerBytes.length;
  for (const t of Object.values(tensors)) {
    out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), pos);
    pos += t.data.byteLength;
  }
  return out;
}
