/**
 * Runs each ONNX graph of a model on the inputs of a parity fixture (written by
 * training/export.py) and compares with the torch outputs.
 *
 *   deno task parity <fixture-dir> <model-dir> [tolerance=1e-4]
 */
import { checkParity } from "../support/parity.ts";

const [fixtureDir, modelDir, tolerance = "1e-4"] = Deno.args;
if (!fixtureDir || !modelDir) {
  console.error("usage: deno task parity <fixture-dir> <model-dir> [tolerance]");
  Deno.exit(2);
}
const differences = await checkParity(fixtureDir, modelDir);
let ok = true;
for (const [name, diff] of Object.entries(differences)) {
  const pass = diff <= Number(tolerance);
  ok &&= pass;
  console.log(`${pass ? "ok  " : "FAIL"} ${name}: max |onnx - torch| = ${diff.toExponential(2)}`);
}
Deno.exit(ok ? 0 : 1);
