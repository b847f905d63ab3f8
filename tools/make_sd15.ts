/**
 * Makes (or finds cached) an SD-1.5-scale model with seeded random weights (support/make_sd15.ts).
 *
 *   deno task make-sd15 [--out DIR] [--variant fp32|fp16|scalar-timestep] [--size full|mini] [--seed N]
 *
 * Without --out the model goes to $CACHE_DIR/sd15/<size>-<variant>-seed<N>-v<format>.
 */
import { parseArgs } from "node:util";
import {
  makeSd15,
  SD15_VARIANTS,
  sd15CacheDir,
  type Sd15Size,
  type Sd15Variant,
} from "../support/make_sd15.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    out: { type: "string" },
    variant: { type: "string", default: "fp32" },
    size: { type: "string", default: "full" },
    seed: { type: "string", default: "0" },
  },
});
if (!SD15_VARIANTS.includes(values.variant as Sd15Variant) || !["full", "mini"].includes(values.size!)) {
  console.error(`--variant must be one of ${SD15_VARIANTS.join(", ")}; --size full or mini`);
  Deno.exit(2);
}
const options = {
  variant: values.variant as Sd15Variant,
  size: values.size as Sd15Size,
  seed: Number(values.seed),
};
const started = performance.now();
const { dir, info, made } = await makeSd15(options, values.out ?? sd15CacheDir(options));
const seconds = ((performance.now() - started) / 1000).toFixed(1);
console.log(made ? `made ${dir} in ${seconds} s` : `${dir} already holds this model`);
console.log(JSON.stringify(info));
