/**
 * Gives a UNet graph per-row LoRA inputs on every attention projection, once, at load.
 * For each targeted linear layer y = x W^T (an ONNX MatMul of x by the weight) it adds
 *     y += (x @ D) @ U        D: [batch, in, rank], U: [batch, rank, out]   (graph inputs)
 * so that switching adapters is feeding other tensors, and one batch can mix adapters.
 * Targets are found by module path: from node names (`/down_blocks.0/.../attn1/to_q/MatMul`,
 * as torch and optimum exports name them) or, where nodes are anonymous, from the weight
 * initializer's name (`down_blocks.0. ... .attn1.to_q.weight`, possibly behind a Transpose).
 */
import {
  BYTES,
  decodeMessage,
  encodeMessage,
  type Field,
  firstString,
  int,
  ints,
  msg,
  str,
  strings,
} from "./protobuf.ts";

export const TARGET_PROJECTIONS = ["to_q", "to_k", "to_v", "to_out.0"] as const;
export const REWRITE_VERSION = 1;

export interface LoraTarget {
  /** diffusers module path, e.g. `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`. */
  module: string;
  inFeatures: number;
  outFeatures: number;
  downInput: string;
  upInput: string;
}

export interface RewriteResult {
  model: Uint8Array;
  targets: LoraTarget[];
  /** External-data files the graph's initializers reference, relative to the model file. */
  externalFiles: string[];
}

const NODE_PATH = /^\/?(.*\/attn[12]\/(?:to_q|to_k|to_v|to_out\.0))\/MatMul(?:_\d+)?$/;
const WEIGHT_NAME =
  /(?:^|[^\w.])?((?:[\w]+\.)*?(?:down_blocks|mid_block|up_blocks)[\w.]*\.attn[12]\.(?:to_q|to_k|to_v|to_out\.0))\.weight$/;
/** ONNX TensorProto data types of the weights that can take LoRA inputs (the inputs get the same). */
const FLOAT = 1, FLOAT16 = 10;
const LORA_TYPES = new Set([FLOAT, FLOAT16]);

interface Node {
  fields: Field[];
  name: string;
  opType: string;
  inputs: string[];
  outputs: string[];
}

function decodeNode(bytes: Uint8Array): Node {
  const fields = decodeMessage(bytes);
  return {
    fields,
    name: firstString(fields, 3) ?? "",
    opType: firstString(fields, 4) ?? "",
    inputs: strings(fields, 1),
    outputs: strings(fields, 2),
  };
}

function node(name: string, opType: string, inputs: string[], outputs: string[]): Field {
  return msg(1, [
    ...inputs.map((i) => str(1, i)),
    ...outputs.map((o) => str(2, o)),
    str(3, name),
    str(4, opType),
  ]);
}

function tensorInput(name: string, dims: (number | string)[], elemType: number): Field {
  const dimFields = dims.map((d) => msg(1, [typeof d === "number" ? int(1, d) : str(2, d)]));
  const tensorType = msg(1, [int(1, elemType), msg(2, dimFields)]);
  return msg(11, [str(1, name), msg(2, [tensorType])]);
}

interface Analysis {
  model: Field[];
  graphIndex: number;
  graph: Field[];
  nodes: Node[];
  /** Target per MatMul node index, with where its weight lives. */
  matches: Map<number, LoraTarget & { weightName: string; weightTransposed: boolean; elemType: number }>;
  externalFiles: string[];
}

function analyse(modelBytes: Uint8Array): Analysis {
  const model = decodeMessage(modelBytes);
  const graphIndex = model.findIndex((f) => f.field === 7 && f.wire === BYTES);
  if (graphIndex < 0) throw new Error("not an ONNX model: no graph");
  const graph = decodeMessage(model[graphIndex].value as Uint8Array);

  const initializers = new Map<string, { dims: number[]; dataType: number }>();
  const externalFiles = new Set<string>();
  for (const f of graph.filter((f) => f.field === 5)) {
    const tensor = decodeMessage(f.value as Uint8Array);
    const name = firstString(tensor, 8) ?? "";
    initializers.set(name, { dims: ints(tensor, 1).map(Number), dataType: Number(ints(tensor, 2)[0] ?? 1n) });
    for (const entry of tensor.filter((t) => t.field === 13)) {
      const kv = decodeMessage(entry.value as Uint8Array);
      if (firstString(kv, 1) === "location") externalFiles.add(firstString(kv, 2)!);
    }
  }
  const nodes = graph.filter((f) => f.field === 1).map((f) => decodeNode(f.value as Uint8Array));
  const producer = new Map<string, Node>();
  for (const n of nodes) for (const o of n.outputs) producer.set(o, n);

  /** The MatMul's weight operand if it is an initializer [in, out], or a Transpose of one [out, in]. */
  const weightOf = (n: Node) => {
    const direct = initializers.get(n.inputs[1]);
    if (direct?.dims.length === 2) {
      return { inOut: [direct.dims[0], direct.dims[1]], name: n.inputs[1], transposed: false, ...direct };
    }
    const transpose = producer.get(n.inputs[1]);
    const source = transpose?.opType === "Transpose" ? initializers.get(transpose.inputs[0]) : undefined;
    if (source?.dims.length === 2) {
      return {
        inOut: [source.dims[1], source.dims[0]],
        name: transpose!.inputs[0],
        transposed: true,
        ...source,
      };
    }
    return undefined;
  };

  const matches: Analysis["matches"] = new Map();
  const seen = new Set<string>();
  nodes.forEach((n, index) => {
    if (n.opType !== "MatMul") return;
    const weight = weightOf(n);
    const module = NODE_PATH.exec(n.name)?.[1]?.replaceAll("/", ".") ??
      (weight ? WEIGHT_NAME.exec(weight.name)?.[1] : undefined);
    if (!module || !weight || seen.has(module)) return;
    if (!LORA_TYPES.has(weight.dataType)) {
      throw new Error(
        `${module}: only float32 and float16 weights take LoRA inputs (data type ${weight.dataType})`,
      );
    }
    seen.add(module);
    matches.set(index, {
      module,
      inFeatures: weight.inOut[0],
      outFeatures: weight.inOut[1],
      downInput: `lora.${module}.down`,
      upInput: `lora.${module}.up`,
      weightName: weight.name,
      weightTransposed: weight.transposed,
      elemType: weight.dataType,
    });
  });
  return { model, graphIndex, graph, nodes, matches, externalFiles: [...externalFiles] };
}

function withGraph(a: Analysis, graph: Field[]): Uint8Array {
  return encodeMessage(
    a.model.map((f, i) => i === a.graphIndex ? { field: 7, wire: BYTES, value: encodeMessage(graph) } : f),
  );
}

const publicTarget = ({ module, inFeatures, outFeatures, downInput, upInput }: LoraTarget): LoraTarget => ({
  module,
  inFeatures,
  outFeatures,
  downInput,
  upInput,
});

/** The LoRA targets of a UNet graph, without changing it. */
export function findLoraTargets(modelBytes: Uint8Array): LoraTarget[] {
  return [...analyse(modelBytes).matches.values()].map(publicTarget);
}

export function addLoraInputs(modelBytes: Uint8Array): RewriteResult {
  const a = analyse(modelBytes);
  if (
    a.graph.some((f) =>
      f.field === 11 && firstString(decodeMessage(f.value as Uint8Array), 1)?.startsWith("lora.")
    )
  ) {
    throw new Error("this graph already has LoRA inputs");
  }
  const rewritten: Field[] = [];
  a.nodes.forEach((n, index) => {
    const target = a.matches.get(index);
    if (!target) {
      rewritten.push({ field: 1, wire: BYTES, value: encodeMessage(n.fields) });
      return;
    }
    const y = n.outputs[0], base = `${y}/base`;
    rewritten.push({
      field: 1,
      wire: BYTES,
      value: encodeMessage(n.fields.map((f) => f.field === 2 ? str(2, base) : f)),
    });
    rewritten.push(
      node(`${n.name}/lora_down`, "MatMul", [n.inputs[0], target.downInput], [`${y}/lora_down`]),
    );
    rewritten.push(node(`${n.name}/lora_up`, "MatMul", [`${y}/lora_down`, target.upInput], [`${y}/lora_up`]));
    rewritten.push(node(`${n.name}/lora_add`, "Add", [base, `${y}/lora_up`], [y]));
  });
  const matches = [...a.matches.values()];
  const newInputs = matches.flatMap((t) => [
    tensorInput(t.downInput, ["batch", t.inFeatures, "lora_rank"], t.elemType),
    tensorInput(t.upInput, ["batch", "lora_rank", t.outFeatures], t.elemType),
  ]);
  const targets = matches.map(publicTarget);
  // Repeated fields keep their own order; nodes stay topologically sorted with each LoRA branch
  // right after the MatMul it extends.
  const graph = [...rewritten, ...a.graph.filter((f) => f.field !== 1), ...newInputs];
  return { model: withGraph(a, graph), targets, externalFiles: a.externalFiles };
}

/** Reads `length` bytes at `offset` of an external-data file named relative to the model. */
export type ExternalReader = (location: string, offset: number, length: number) => Uint8Array;

/** A tensor's bytes, inline or external; undefined where they are neither. */
function tensorBytes(tensor: Field[], readExternal?: ExternalReader): Uint8Array | undefined {
  const raw = tensor.find((t) => t.field === 9);
  if (raw) return raw.value as Uint8Array;
  const entries = new Map(
    tensor.filter((t) => t.field === 13).map((t) => {
      const kv = decodeMessage(t.value as Uint8Array);
      return [firstString(kv, 1)!, firstString(kv, 2)!];
    }),
  );
  const location = entries.get("location");
  if (!location || !readExternal) return undefined;
  return readExternal(location, Number(entries.get("offset") ?? 0), Number(entries.get("length")));
}

/**
 * The graph with `delta(module)` (a [out, in] update, W' = W + delta) added to the weights of the
 * targeted projections: the merged-weights reference that the per-row inputs must equal. Merged
 * weights are written inline; the others stay where they are (external ones need `readExternal`
 * only for the merged ones, and the result must sit beside the same external files).
 */
export function mergeIntoWeights(
  modelBytes: Uint8Array,
  delta: (target: LoraTarget) => Float32Array | undefined,
  readExternal?: ExternalReader,
): Uint8Array {
  const a = analyse(modelBytes);
  const byWeight = new Map([...a.matches.values()].map((t) => [t.weightName, t]));
  const graph = a.graph.map((f) => {
    if (f.field !== 5) return f;
    const tensor = decodeMessage(f.value as Uint8Array);
    const target = byWeight.get(firstString(tensor, 8) ?? "");
    const update = target && delta(publicTarget(target));
    if (!target || !update) return f;
    const bytes = tensorBytes(tensor, readExternal)?.slice();
    if (!bytes) throw new Error(`${target.weightName}: external weights need a reader`);
    const weights = target.elemType === FLOAT16
      ? new Float16Array(bytes.buffer)
      : new Float32Array(bytes.buffer);
    const { inFeatures: nIn, outFeatures: nOut } = target;
    for (let o = 0; o < nOut; o++) {
      for (let i = 0; i < nIn; i++) {
        weights[target.weightTransposed ? o * nIn + i : i * nOut + o] += update[o * nIn + i];
      }
    }
    const inline = tensor.filter((t) => t.field !== 9 && t.field !== 13 && t.field !== 14);
    return msg(5, [...inline, { field: 9, wire: BYTES, value: bytes }]);
  });
  return withGraph(a, graph);
}
