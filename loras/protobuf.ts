/**
 * A minimal protobuf wire-format reader and writer: enough to edit ONNX models (a ModelProto)
 * field by field while carrying every field it does not touch through unchanged.
 */
export const VARINT = 0, FIXED64 = 1, BYTES = 2, FIXED32 = 5;

export interface Field {
  field: number;
  wire: number;
  /** varint: the number; fixed: the raw 4 or 8 bytes; length-delimited: the payload. */
  value: bigint | Uint8Array;
}

function readVarint(bytes: Uint8Array, pos: number): [bigint, number] {
  let result = 0n, shift = 0n;
  while (true) {
    if (pos >= bytes.length) throw new Error("protobuf: truncated varint");
    const b = bytes[pos++];
    result |= BigInt(b & 0x7f) << shift;
    if (b < 0x80) return [result, pos];
    shift += 7n;
    if (shift > 70n) throw new Error("protobuf: varint too long");
  }
}

export function decodeMessage(bytes: Uint8Array): Field[] {
  const fields: Field[] = [];
  let pos = 0;
  while (pos < bytes.length) {
    const [key, next] = readVarint(bytes, pos);
    pos = next;
    const field = Number(key >> 3n), wire = Number(key & 7n);
    if (wire === VARINT) {
      const [value, after] = readVarint(bytes, pos);
      fields.push({ field, wire, value });
      pos = after;
    } else if (wire === BYTES) {
      const [length, after] = readVarint(bytes, pos);
      const end = after + Number(length);
      if (end > bytes.length) throw new Error("protobuf: truncated field");
      fields.push({ field, wire, value: bytes.subarray(after, end) });
      pos = end;
    } else if (wire === FIXED64 || wire === FIXED32) {
      const size = wire === FIXED64 ? 8 : 4;
      fields.push({ field, wire, value: bytes.subarray(pos, pos + size) });
      pos += size;
    } else {
      throw new Error(`protobuf: unsupported wire type ${wire}`);
    }
  }
  return fields;
}

function varintBytes(value: bigint): number[] {
  const out: number[] = [];
  let v = BigInt.asUintN(64, value);
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) b |= 0x80;
    out.push(b);
  } while (v > 0n);
  return out;
}

export function encodeMessage(fields: Field[]): Uint8Array {
  const parts: Uint8Array[] = [];
  let total = 0;
  const push = (part: Uint8Array) => {
    parts.push(part);
    total += part.length;
  };
  for (const f of fields) {
    push(Uint8Array.from(varintBytes(BigInt((f.field << 3) | f.wire))));
    if (f.wire === VARINT) push(Uint8Array.from(varintBytes(f.value as bigint)));
    else if (f.wire === BYTES) {
      push(Uint8Array.from(varintBytes(BigInt((f.value as Uint8Array).length))));
      push(f.value as Uint8Array);
    } else push(f.value as Uint8Array);
  }
  const out = new Uint8Array(total);
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

const utf8 = new TextEncoder(), text = new TextDecoder();

export const str = (field: number, value: string): Field => ({
  field,
  wire: BYTES,
  value: utf8.encode(value),
});
export const msg = (field: number, fields: Field[]): Field => ({
  field,
  wire: BYTES,
  value: encodeMessage(fields),
});
export const int = (field: number, value: number | bigint): Field => ({
  field,
  wire: VARINT,
  value: BigInt(value),
});

export function strings(fields: Field[], field: number): string[] {
  return fields.filter((f) => f.field === field).map((f) => text.decode(f.value as Uint8Array));
}

export function firstString(fields: Field[], field: number): string | undefined {
  return strings(fields, field)[0];
}

export function ints(fields: Field[], field: number): bigint[] {
  const out: bigint[] = [];
  for (const f of fields.filter((f) => f.field === field)) {
    if (f.wire === VARINT) out.push(f.value as bigint);
    else { // packed
      const bytes = f.value as Uint8Array;
      for (let pos = 0; pos < bytes.length;) {
        const [v, next] = readVarint(bytes, pos);
        out.push(v);
        pos = next;
      }
    }
  }
  return out;
}
