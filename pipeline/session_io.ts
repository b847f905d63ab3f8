/**
 * What one export declares, and the conversion between it and the pipeline's own feeds. The pipeline
 * and the batcher speak one form (float32 values, int32 token ids, a float32 timestep per row); exports
 * differ: float16 or float32 tensors, int32 or int64 ids and timesteps, a timestep per row ([batch]),
 * one for the batch ([] or [1]). Each batched run is converted once, at the session's edge.
 */
import * as ort from "onnxruntime-node";
import type { Feeds } from "./batcher.ts";

export type { Feeds };

export interface InputSpec {
  type: ort.Tensor.Type;
  /** Declared dimensions: numbers where fixed, names (or undefined) where dynamic. */
  shape: readonly (number | string | undefined)[];
}

/** One value for the whole batch: rank 0, or rank 1 fixed to 1. */
export function isBatchScalar(spec: InputSpec): boolean {
  return spec.shape.length === 0 || (spec.shape.length === 1 && spec.shape[0] === 1);
}

/**
 * A float16 tensor from its bits. A plain object rather than `new ort.Tensor`: onnxruntime-common
 * turns a Uint16Array into a Float16Array where the runtime has one, and Deno's N-API does not hand a
 * Float16Array's bytes to onnxruntime-node ("not enough space: expected N, got 0").
 */
function float16Tensor(values: Float32Array, dims: readonly number[]): ort.Tensor {
  const bits = new Uint16Array(Float16Array.from(values).buffer);
  return { type: "float16", dims, data: bits, location: "cpu", size: values.length } as unknown as ort.Tensor;
}

/** A pipeline tensor in the declared type and shape of an input. */
export function toInput(tensor: ort.Tensor, spec: InputSpec): ort.Tensor {
  const scalar = isBatchScalar(spec);
  const dims = scalar ? spec.shape as number[] : tensor.dims;
  const values = scalar ? (tensor.data as Float32Array | Int32Array).subarray(0, 1) : tensor.data;
  if (tensor.type === spec.type) {
    return scalar ? new ort.Tensor(spec.type, values as Float32Array, dims) : tensor;
  }
  const numbers = values as Float32Array | Int32Array;
  switch (spec.type) {
    case "float16":
      return float16Tensor(Float32Array.from(numbers), dims);
    case "float32":
      return new ort.Tensor("float32", Float32Array.from(numbers), dims);
    case "int64":
      return new ort.Tensor("int64", BigInt64Array.from(numbers, (v) => BigInt(Math.round(v))), dims);
    case "int32":
      return new ort.Tensor("int32", Int32Array.from(numbers, Math.round), dims);
    default:
      throw new Error(`input of type ${spec.type} is not supported`);
  }
}

/** An output in the pipeline's form: float16 widened to float32. */
export function fromOutput(tensor: ort.Tensor): ort.Tensor {
  if (tensor.type !== "float16") return tensor;
  const data = tensor.data as unknown as Float16Array | Uint16Array;
  const halves = data instanceof Uint16Array
    ? new Float16Array(data.buffer, data.byteOffset, data.length)
    : data;
  return new ort.Tensor("float32", Float32Array.from(halves), tensor.dims);
}

export function inputSpecs(session: ort.InferenceSession): Map<string, InputSpec> {
  const specs = new Map<string, InputSpec>();
  for (const meta of session.inputMetadata) {
    if (meta.isTensor) specs.set(meta.name, { type: meta.type, shape: meta.shape });
  }
  return specs;
}

/** Feeds converted to what `specs` declares; names it does not declare pass unchanged. */
export function toInputs(feeds: Feeds, specs: ReadonlyMap<string, InputSpec>): Feeds {
  return Object.fromEntries(
    Object.entries(feeds).map(([name, t]) => [name, specs.has(name) ? toInput(t, specs.get(name)!) : t]),
  );
}

export function fromOutputs(outputs: Feeds): Feeds {
  return Object.fromEntries(Object.entries(outputs).map(([name, t]) => [name, fromOutput(t)]));
}

/** The precision of a session's float inputs: the model's precision, for /v1/models. */
export function floatPrecision(session: ort.InferenceSession): "float16" | "float32" {
  return session.inputMetadata.some((m) => m.isTensor && m.type === "float16") ? "float16" : "float32";
}
