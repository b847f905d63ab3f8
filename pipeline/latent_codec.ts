/** Latents on the wire: {"shape": [n, c, h, w], "dtype": "float32", "data": base64 of little-endian floats}. */
export interface WireLatent {
  shape: number[];
  dtype: "float32";
  data: string;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

export function encodeLatent(values: Float32Array, shape: number[]): WireLatent {
  const bytes = new Uint8Array(values.length * 4);
  const view = new DataView(bytes.buffer);
  values.forEach((v, i) => view.setFloat32(i * 4, v, true));
  return { shape, dtype: "float32", data: bytes.toBase64() };
}

/** A latent that does not hold what it claims: the sender's fault. */
export class LatentError extends Error {}

/** Throws a LatentError with a reason when the data does not hold the shape. */
export function decodeLatent(latent: WireLatent): Float32Array {
  const count = latent.shape.reduce((a, b) => a * b, 1);
  let bytes: Uint8Array;
  try {
    bytes = Uint8Array.fromBase64(latent.data);
  } catch {
    throw new LatentError("data is not valid base64");
  }
  if (bytes.length !== count * 4) {
    throw new LatentError(`data holds ${bytes.length} bytes; shape [${latent.shape}] needs ${count * 4}`);
  }
  const out = LITTLE_ENDIAN ? new Float32Array(bytes.buffer) : new Float32Array(count);
  if (!LITTLE_ENDIAN) {
    const view = new DataView(bytes.buffer);
    for (let i = 0; i < count; i++) out[i] = view.getFloat32(i * 4, true);
  }
  if (!out.every(Number.isFinite)) throw new LatentError("data holds non-finite values");
  return out;
}
