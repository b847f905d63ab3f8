/** Hostile inputs shared by the hostile-input tests and the fuzz suite. */
import { deflateSync } from "node:zlib";

function crc32(bytes: Uint8Array): number {
  let crc = ~0;
  for (const byte of bytes) {
    crc ^= byte;
    for (let k = 0; k < 8; k++) crc = (crc >>> 1) ^ (0xedb88320 & -(crc & 1));
  }
  return ~crc >>> 0;
}

/** A flat RGB PNG of any size, written directly (sharp will not create 1 x 16777216). */
export function flatPng(width: number, height: number): Uint8Array {
  const row = new Uint8Array(1 + 3 * width);
  for (let x = 0; x < width; x++) row.set([128, 64, 32], 1 + 3 * x);
  const raw = new Uint8Array(row.length * height);
  for (let y = 0; y < height; y++) raw.set(row, y * row.length);
  const chunk = (type: string, data: Uint8Array) => {
    const out = new Uint8Array(12 + data.length);
    const view = new DataView(out.buffer);
    view.setUint32(0, data.length);
    out.set(new TextEncoder().encode(type), 4);
    out.set(data, 8);
    view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
    return out;
  };
  const header = new Uint8Array(13);
  new DataView(header.buffer).setUint32(0, width);
  new DataView(header.buffer).setUint32(4, height);
  header.set([8, 2, 0, 0, 0], 8);
  const parts = [
    new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", header),
    chunk("IDAT", new Uint8Array(deflateSync(raw, { level: 9 }))),
    chunk("IEND", new Uint8Array(0)),
  ];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) (out.set(part, at), at += part.length);
  return out;
}

/** The raw HTTP/1.1 exchange of `request` over one connection: what came back before it closed. */
export async function rawExchange(url: string, request: string, { closeWrite = true, waitMs = 10_000 } = {}) {
  const { hostname, port } = new URL(url);
  const conn = await Deno.connect({ hostname, port: Number(port) });
  await conn.write(new TextEncoder().encode(request));
  if (closeWrite) await conn.closeWrite();
  const started = performance.now();
  const chunks: Uint8Array[] = [];
  const timer = setTimeout(() => conn.close(), waitMs);
  let closed = false, firstMs = Infinity;
  try {
    const buffer = new Uint8Array(65536);
    for (;;) {
      const n = await conn.read(buffer);
      if (n === null) {
        closed = true;
        break;
      }
      if (chunks.length === 0) firstMs = performance.now() - started;
      chunks.push(buffer.slice(0, n));
    }
  } catch { /* closed by the timer */ }
  clearTimeout(timer);
  try {
    conn.close();
  } catch { /* already closed */ }
  const text = new TextDecoder().decode(await new Blob(chunks as BlobPart[]).arrayBuffer());
  const status = Number(text.match(/^HTTP\/1\.1 (\d{3})/)?.[1] ?? 0);
  const body = text.slice(text.indexOf("\r\n\r\n") + 4);
  let json: any;
  try {
    json = JSON.parse(body);
  } catch { /* no JSON body */ }
  return { status, json, text, closed, firstMs };
}

/** Image files of formats the server refuses, by the name it gives them: just enough of each header. */
export const bmp = () => {
  const bytes = new Uint8Array(70);
  const view = new DataView(bytes.buffer);
  bytes.set([0x42, 0x4d]);
  view.setUint32(2, 70, true);
  view.setUint32(10, 54, true);
  view.setUint32(14, 40, true);
  view.setInt32(18, 2, true);
  view.setInt32(22, 2, true);
  view.setUint16(26, 1, true);
  view.setUint16(28, 24, true);
  return bytes;
};
// header (reserved 0, type 1, one image) and one 16 x 16, 32-bit directory entry
export const ico = () => {
  const bytes = new Uint8Array(62);
  bytes.set([0, 0, 1, 0, 1, 0, 16, 16, 0, 0, 1, 0, 32, 0]);
  new DataView(bytes.buffer).setUint32(14, 40, true);
  new DataView(bytes.buffer).setUint32(18, 22, true);
  return bytes;
};
export const jp2 = () =>
  new Uint8Array([0, 0, 0, 12, 0x6a, 0x50, 0x20, 0x20, 0x0d, 0x0a, 0x87, 0x0a, ...new Array(40).fill(0)]);
export const j2k = () => new Uint8Array([0xff, 0x4f, 0xff, 0x51, ...new Array(40).fill(0)]);
