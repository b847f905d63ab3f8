/**
 * Writes a deterministic random LoRA adapter for a model's UNet (the legacy attention-processor key
 * format), as the test adapter shipped in models/hub-cache was made.
 *
 *   deno run -A tools/random_adapter.ts <model-dir> <out.safetensors> [seed] [rank]
 */
import { findLoraTargets } from "../loras/graph_rewrite.ts";
import { randomAdapter } from "../support/random_adapter.ts";

const [modelDir, out, seed = "1", rank = "4"] = Deno.args;
const targets = findLoraTargets(await Deno.readFile(`${modelDir}/unet/model.onnx`));
await Deno.writeFile(
  out,
  randomAdapter(targets, { seed: Number(seed), rank: Number(rank), format: "legacy-attention-processor" }),
);
console.log(`wrote ${out}: ${targets.length} targets, rank ${rank}`);
