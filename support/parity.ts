/**
 * Runs each ONNX graph of a model on the inputs of a parity fixture (written by
 * training/export.py) and compares with the torch outputs: for the tests and `deno task parity`
 * (tools/parity.ts).
 */
import * as ort from "onnxruntime-node";
import { fromOutputs, inputSpecs, toInputs } from "../pipeline/session_io.ts";

export interface FixtureTensor {
  name: string;
  dtype: "float32" | "int32" | "int64" | "uint8";
  shape: number[];
  offset: number;
  bytes: number;
}

export interface Fixture {
  graphs: Record<string, { inputs: FixtureTensor[]; outputs: FixtureTensor[] }>;
  [extra: string]: unknown;
}

export async function readFixture(
  dir: string,
): Promise<{ fixture: Fixture; tensor: (t: FixtureTensor) => ort.Tensor }> {
  const fixture: Fixture = JSON.parse(await Deno.readTextFile(`${dir}/fixture.json`));
  const blob = await Deno.readFile(`${dir}/fixture.bin`);
  const tensor = (t: FixtureTensor) => {
    const bytes = blob.slice(t.offset, t.offset + t.bytes).buffer;
    const data = t.dtype === "float32"
      ? new Float32Array(bytes)
      : t.dtype === "int32"
      ? new Int32Array(bytes)
      : t.dtype === "int64"
      ? new BigInt64Array(bytes)
      : new Uint8Array(bytes);
    return new ort.Tensor(t.dtype, data, t.shape);
  };
  return { fixture, tensor };
}

export function maxAbsDifference(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Infinity;
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  return worst;
}

/**
 * Largest |onnx - torch| per graph output. The fixture's float32 inputs are converted to what each
 * graph declares (float16 exports, a timestep for the batch), as the server converts them.
 */
export async function checkParity(
  fixtureDir: string,
  modelDir: string,
  provider = "cpu",
): Promise<Record<string, number>> {
  const { fixture, tensor } = await readFixture(fixtureDir);
  const result: Record<string, number> = {};
  for (const [graph, io] of Object.entries(fixture.graphs)) {
    const session = await ort.InferenceSession.create(`${modelDir}/${graph}/model.onnx`, {
      executionProviders: [provider],
    });
    const feeds = toInputs(
      Object.fromEntries(io.inputs.map((t) => [t.name, tensor(t)])),
      inputSpecs(session),
    );
    const outputs = fromOutputs(await session.run(feeds) as Record<string, ort.Tensor>);
    for (const expected of io.outputs) {
      const got = outputs[expected.name];
      result[`${graph}.${expected.name}`] = got
        ? maxAbsDifference(got.data as Float32Array, tensor(expected).data as Float32Array)
        : Infinity;
    }
    await session.release();
  }
  return result;
}
