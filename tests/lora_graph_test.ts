import { deepStrictEqual as assertEquals, ok as assert, throws as assertThrows } from "node:assert/strict";
import * as ort from "onnxruntime-node";
import { addLoraInputs, findLoraTargets, type LoraTarget, mergeIntoWeights } from "../loras/graph_rewrite.ts";
import { AdapterError, buildAdapter } from "../loras/adapter.ts";
import { parseSafetensors, writeSafetensors } from "../loras/safetensors.ts";
import { mapKeys } from "../loras/keys.ts";
import { packLoraFeeds, type RowAdapters } from "../loras/pack.ts";
import { gaussianNoise } from "../pipeline/rng.ts";
import { randomAdapter } from "../support/random_adapter.ts";
import { assertClose, MODEL_DIR } from "./helpers.ts";

const unetBytes = await Deno.readFile(`${MODEL_DIR}/unet/model.onnx`);
const targets = findLoraTargets(unetBytes);
const targetMap = new Map(targets.map((t) => [t.module, t]));

/** Adapter A: legacy attention-processor keys, rank 4, every target. */
const legacyFile = () => randomAdapter(targets, { seed: 100, rank: 4, format: "legacy-attention-processor" });
/** Adapter B: PEFT keys with alpha 4 at rank 2 (factor 2), attn2 only, plus a text-encoder key. */
function peftFile(): Uint8Array {
  const file = parseSafetensors(randomAdapter(targets, {
    seed: 500,
    rank: 2,
    format: "diffusers-peft",
    alpha: 4,
    only: (t) => t.module.includes(".attn2."),
  })).tensors;
  file.set("text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight", {
    shape: [2, 4],
    data: new Float32Array(8),
  });
  return writeSafetensors(Object.fromEntries(file));
}

const source = (repo: string) => ({
  repo,
  file: "lora.safetensors",
  revision: "main",
  commit: "0".repeat(40),
});
const adapterA = buildAdapter(source("test/a"), legacyFile(), targetMap);
const adapterB = buildAdapter(source("test/b"), peftFile(), targetMap);

/** W' - W = scale * factor * up @ down, as a [out, in] matrix, per target. */
function mergedDelta(parts: { file: Uint8Array; scale: number }[]) {
  return (t: LoraTarget) => {
    const delta = new Float32Array(t.outFeatures * t.inFeatures);
    let touched = false;
    for (const { file, scale } of parts) {
      const mapped = mapKeys(parseSafetensors(file).tensors, targetMap.keys()).modules.get(t.module);
      if (!mapped) continue;
      touched = true;
      const r = mapped.down.shape[0], factor = mapped.alpha === undefined ? 1 : mapped.alpha / r;
      for (let o = 0; o < t.outFeatures; o++) {
        for (let i = 0; i < t.inFeatures; i++) {
          let sum = 0;
          for (let k = 0; k < r; k++) {
            sum += mapped.up.data[o * r + k] * mapped.down.data[k * t.inFeatures + i];
          }
          delta[o * t.inFeatures + i] += scale * factor * sum;
        }
      }
    }
    return touched ? delta : undefined;
  };
}

function unetFeeds(rows: number): Record<string, ort.Tensor> {
  return {
    sample: new ort.Tensor("float32", gaussianNoise(1, rows * 256), [rows, 4, 8, 8]),
    timestep: new ort.Tensor("int64", BigInt64Array.from({ length: rows }, (_, i) => BigInt(100 + 300 * i)), [
      rows,
    ]),
    encoder_hidden_states: new ort.Tensor("float32", gaussianNoise(2, rows * 77 * 128), [rows, 77, 128]),
  };
}

function row(feeds: Record<string, ort.Tensor>, index: number): Record<string, ort.Tensor> {
  return Object.fromEntries(
    Object.entries(feeds).map(([name, t]) => {
      const size = t.data.length / t.dims[0];
      return [
        name,
        new ort.Tensor(t.type, (t.data as Float32Array).slice(index * size, (index + 1) * size), [
          1,
          ...t.dims.slice(1),
        ]),
      ];
    }),
  );
}

async function runOut(
  session: ort.InferenceSession,
  feeds: Record<string, ort.Tensor>,
): Promise<Float32Array> {
  return (await session.run(feeds)).out_sample.data as Float32Array;
}

Deno.test("graph rewrite: LoRA inputs on every attention projection; zero adapters leave the output unchanged", async () => {
  assertEquals(targets.length, 56);
  assert(targets.every((t) => /attn[12]\.(to_q|to_k|to_v|to_out\.0)$/.test(t.module)));
  const { model } = addLoraInputs(unetBytes);
  const base = await ort.InferenceSession.create(unetBytes);
  const lora = await ort.InferenceSession.create(model);
  const feeds = unetFeeds(2);
  const none = await runOut(lora, { ...feeds, ...packLoraFeeds(targets, [[], []]) });
  assertEquals(Array.from(none), Array.from(await runOut(base, feeds)));
  assertThrows(() => addLoraInputs(model), /already has LoRA inputs/);
});

Deno.test("per-row LoRA: a batch mixing none, A at 1 and B at 0.5 equals each row run alone on merged weights (1e-4)", async () => {
  const lora = await ort.InferenceSession.create(addLoraInputs(unetBytes).model);
  const rows: RowAdapters[] = [[], [{ adapter: adapterA, scale: 1 }], [{ adapter: adapterB, scale: 0.5 }], [
    { adapter: adapterA, scale: 1 },
    { adapter: adapterB, scale: 0.5 },
  ]];
  const feeds = unetFeeds(rows.length);
  const batched = await runOut(lora, { ...feeds, ...packLoraFeeds(targets, rows) });
  const references = [
    unetBytes,
    mergeIntoWeights(unetBytes, mergedDelta([{ file: legacyFile(), scale: 1 }])),
    mergeIntoWeights(unetBytes, mergedDelta([{ file: peftFile(), scale: 0.5 }])),
    mergeIntoWeights(
      unetBytes,
      mergedDelta([{ file: legacyFile(), scale: 1 }, { file: peftFile(), scale: 0.5 }]),
    ),
  ];
  const size = batched.length / rows.length;
  const base = await runOut(await ort.InferenceSession.create(unetBytes), row(feeds, 1));
  for (let i = 0; i < rows.length; i++) {
    const expected = await runOut(await ort.InferenceSession.create(references[i]), row(feeds, i));
    assertClose(batched.subarray(i * size, (i + 1) * size), expected, 1e-4, `row ${i}`);
  }
  // The adapter really changes the prediction (so the comparison above can fail).
  let change = 0;
  for (let j = 0; j < size; j++) change = Math.max(change, Math.abs(batched[size + j] - base[j]));
  assert(change > 1e-2, `adapter A changed the output by only ${change}`);
});

Deno.test("adapters: kohya keys map to the same modules; mismatches and foreign files are rejected with reasons", () => {
  const t = targets[0];
  const kohya = randomAdapter(targets, { seed: 9, rank: 2, format: "kohya", alpha: 1, only: (x) => x === t });
  const up = parseSafetensors(kohya).tensors.get(
    `lora_unet_${t.module.replaceAll(".", "_")}.lora_up.weight`,
  )!;
  const adapter = buildAdapter(source("test/k"), kohya, targetMap);
  assertEquals([adapter.format, [...adapter.modules.keys()]], ["kohya", [t.module]]);
  assertClose(adapter.modules.get(t.module)!.upT.subarray(0, 1), [0.5 * up.data[0]], 1e-7, "alpha / rank");
  assertEquals(adapterB.ignored.some((k) => k.startsWith("text_encoder")), true);

  const wrongShape = writeSafetensors({
    [`${t.module}.lora_A.weight`]: {
      shape: [2, t.inFeatures + 1],
      data: new Float32Array(2 * (t.inFeatures + 1)),
    },
    [`${t.module}.lora_B.weight`]: { shape: [t.outFeatures, 2], data: new Float32Array(2 * t.outFeatures) },
  });
  assertThrows(
    () => buildAdapter(source("x/y"), wrongShape, targetMap),
    (e) => e instanceof AdapterError && /do not fit/.test(e.message),
  );
  const foreign = writeSafetensors({
    "model.layers.0.q_proj.lora_A.weight": { shape: [1, 1], data: new Float32Array(1) },
  });
  assertThrows(
    () => buildAdapter(source("x/y"), foreign, targetMap),
    (e) => e instanceof AdapterError && /matches no attention/.test(e.message),
  );
});

Deno.test("safetensors: validates header, JSON, dtypes, shapes and offsets; reads F16 and BF16", () => {
  const good = writeSafetensors({ w: { shape: [2], data: Float32Array.of(1.5, -2) } });
  assertEquals(Array.from(parseSafetensors(good).tensors.get("w")!.data), [1.5, -2]);
  const withHeader = (header: unknown, data = new Uint8Array(8)) => {
    const json = new TextEncoder().encode(JSON.stringify(header));
    const out = new Uint8Array(8 + json.length + data.length);
    new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
    out.set(json, 8);
    out.set(data, 8 + json.length);
    return out;
  };
  const bad: [Uint8Array, RegExp][] = [
    [new Uint8Array(4), /shorter/],
    [Uint8Array.of(255, 255, 255, 255, 0, 0, 0, 0, 1), /exceeds/],
    [withHeader("[1]"), /JSON object|not valid/],
    [withHeader({ w: { dtype: "I64", shape: [1], data_offsets: [0, 8] } }), /dtype/],
    [withHeader({ w: { dtype: "F32", shape: [-1], data_offsets: [0, 4] } }), /shape/],
    [withHeader({ w: { dtype: "F32", shape: [4], data_offsets: [0, 16] } }), /outside/],
    [withHeader({ w: { dtype: "F32", shape: [3], data_offsets: [0, 8] } }), /do not hold/],
    [
      withHeader({
        a: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
        b: { dtype: "F32", shape: [1], data_offsets: [4, 8] },
      }),
      /overlaps/,
    ],
  ];
  for (const [bytes, reason] of bad) assertThrows(() => parseSafetensors(bytes), reason);
  const half = withHeader({
    h: { dtype: "F16", shape: [2], data_offsets: [0, 4] },
    b: { dtype: "BF16", shape: [2], data_offsets: [4, 8] },
  }, Uint8Array.of(0x00, 0x3c, 0x00, 0xc0, 0x80, 0x3f, 0x40, 0xc0));
  const parsed = parseSafetensors(half).tensors;
  assertEquals([Array.from(parsed.get("h")!.data), Array.from(parsed.get("b")!.data)], [[1, -2], [1, -3]]);
});

// ---------------------------------------------------------------- other export styles
import {
  BYTES,
  decodeMessage,
  encodeMessage,
  type Field,
  firstString,
  int,
  msg,
  str,
} from "../loras/protobuf.ts";
import { loraGraph } from "../loras/graph_cache.ts";

/** Applies `edit` to every field of the graph (field 7 of the model). */
function editGraph(model: Uint8Array, edit: (graph: Field[]) => Field[]): Uint8Array {
  const fields = decodeMessage(model);
  return encodeMessage(
    fields.map((f) =>
      f.field === 7
        ? { field: 7, wire: BYTES, value: encodeMessage(edit(decodeMessage(f.value as Uint8Array))) }
        : f
    ),
  );
}

Deno.test("graph rewrite: anonymous node names with readable weight names find the same targets", async () => {
  let counter = 0;
  const renamedWeights = new Map<string, string>();
  const variant = editGraph(unetBytes, (graph) => {
    const nodes = graph.map((f) => {
      if (f.field !== 1) return f;
      const node = decodeMessage(f.value as Uint8Array);
      const name = firstString(node, 3) ?? "";
      const m = /^\/(.*\/attn[12]\/(?:to_q|to_k|to_v|to_out\.0))\/MatMul$/.exec(name);
      if (!m) return f;
      const inputs = node.filter((x) => x.field === 1).map((x) =>
        new TextDecoder().decode(x.value as Uint8Array)
      );
      renamedWeights.set(inputs[1], `${m[1].replaceAll("/", ".")}.weight`);
      return msg(1, node.map((x) => x.field === 3 ? str(3, `MatMul_${counter++}`) : x));
    });
    const rename = (n: string) => renamedWeights.get(n) ?? n;
    return nodes.map((f) => {
      if (f.field === 1) {
        const node = decodeMessage(f.value as Uint8Array);
        return msg(
          1,
          node.map((x) =>
            x.field === 1 ? str(1, rename(new TextDecoder().decode(x.value as Uint8Array))) : x
          ),
        );
      }
      if (f.field === 5) {
        const tensor = decodeMessage(f.value as Uint8Array);
        return msg(
          5,
          tensor.map((x) =>
            x.field === 8 ? str(8, rename(new TextDecoder().decode(x.value as Uint8Array))) : x
          ),
        );
      }
      return f;
    });
  });
  assertEquals(counter, 56);
  assertEquals(findLoraTargets(variant), targets);
  const lora = await ort.InferenceSession.create(addLoraInputs(variant).model);
  const feeds = unetFeeds(1);
  const rows: RowAdapters[] = [[{ adapter: adapterA, scale: 1 }]];
  const merged = await ort.InferenceSession.create(
    mergeIntoWeights(unetBytes, mergedDelta([{ file: legacyFile(), scale: 1 }])),
  );
  assertClose(
    await runOut(lora, { ...feeds, ...packLoraFeeds(targets, rows) }),
    await runOut(merged, feeds),
    1e-4,
    "readable-names variant",
  );
});

Deno.test("graph cache: external-data weights are hard-linked, not copied; the entry is keyed by the graph's content", async () => {
  const dir = await Deno.makeTempDir(), cache = await Deno.makeTempDir();
  try {
    // Move every initializer's bytes to unet/weights.pb, as large SD exports store them.
    const chunks: Uint8Array[] = [];
    let offset = 0;
    const external = editGraph(unetBytes, (graph) =>
      graph.map((f) => {
        if (f.field !== 5) return f;
        const tensor = decodeMessage(f.value as Uint8Array);
        const raw = tensor.find((x) => x.field === 9);
        if (!raw) return f;
        const bytes = raw.value as Uint8Array;
        chunks.push(bytes);
        const entry = (k: string, v: string) => msg(13, [str(1, k), str(2, v)]);
        const moved = [
          ...tensor.filter((x) => x.field !== 9),
          entry("location", "weights.pb"),
          entry("offset", String(offset)),
          entry("length", String(bytes.length)),
          int(14, 1),
        ];
        offset += bytes.length;
        return msg(5, moved);
      }));
    await Deno.mkdir(`${dir}/unet`);
    await Deno.writeFile(`${dir}/unet/model.onnx`, external);
    const weights = new Uint8Array(offset);
    let at = 0;
    for (const c of chunks) {
      weights.set(c, at);
      at += c.length;
    }
    await Deno.writeFile(`${dir}/unet/weights.pb`, weights);
    assert(external.length < unetBytes.length / 4, "the graph file no longer holds the weights");

    const first = await loraGraph(`${dir}/unet/model.onnx`, cache);
    const entry = first.path.slice(0, -"/model.onnx".length);
    const [linked, original] = [
      await Deno.stat(`${entry}/weights.pb`),
      await Deno.stat(`${dir}/unet/weights.pb`),
    ];
    assertEquals(linked.ino, original.ino, "the weights file is the same inode (a hard link)");
    const session = await ort.InferenceSession.create(first.path);
    const feeds = unetFeeds(2);
    assertEquals(
      Array.from(await runOut(session, { ...feeds, ...packLoraFeeds(first.targets, [[], []]) })),
      Array.from(await runOut(await ort.InferenceSession.create(unetBytes), feeds)),
    );
    const again = await loraGraph(`${dir}/unet/model.onnx`, cache);
    assertEquals(again.path, first.path);
    await Deno.writeFile(
      `${dir}/unet/model.onnx`,
      editGraph(external, (g) => [...g, str(10, "a changed doc string")]),
    );
    const changed = await loraGraph(`${dir}/unet/model.onnx`, cache);
    assert(changed.path !== first.path, "a different graph gets its own entry");
  } finally {
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(cache, { recursive: true });
  }
});
