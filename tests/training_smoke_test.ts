import { ok as assert } from "node:assert/strict";
import { pythonReady, runPython } from "../support/python.ts";

Deno.test({
  name: "training recipe smoke test: a few steps of every stage, export, ONNX parity (training/smoke.sh)",
  ignore: !pythonReady,
  async fn() {
    const script = new URL("../training/smoke.sh", import.meta.url).pathname;
    const out = await new Deno.Command("bash", { args: [script], stdout: "piped", stderr: "piped" }).output();
    const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    assert(out.success, text);
    assert(/ok\s+unet\.out_sample/.test(text), text);
    assert(/ok loras/.test(text), text);
  },
});

Deno.test({
  name:
    "Step-wise Variation Regularizer: v and dL_reg/dW match finite differences (training/test_regularizer.py)",
  ignore: !pythonReady,
  async fn() {
    const training = new URL("../training/", import.meta.url).pathname;
    const out = await runPython([`${training}test_regularizer.py`], training);
    assert(/regularizer ok/.test(out), out);
  },
});
