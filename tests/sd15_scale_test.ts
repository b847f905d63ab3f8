/**
 * The SD-1.5-scale checks at SD 1.5's own size (an 860M-parameter UNet, a 123M-parameter text
 * encoder, an 84M-parameter VAE): fp32 with its 3.4 GB of UNet weights as external data, fp16, and a
 * scalar timestep, made here by `deno task make-sd15` (about a minute each, 7.6 GiB peak) and cached.
 * Slow (several minutes on 2 cores, ~14 GB of disk): `deno task test:scale` runs it, as CI's second
 * step; `deno task test` leaves it out.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { join } from "node:path";
import { pythonReady } from "../support/python.ts";
import { makeSd15, SD15_VARIANTS, type Sd15Variant } from "../support/make_sd15.ts";
import { checkParity } from "../support/parity.ts";
import { checkMixedBatch, checkServed } from "./sd15_checks.ts";

const wanted = Deno.env.get("SD15_SCALE") === "1";
if (!wanted) console.log("sd15_scale_test: ignored; `deno task test:scale` runs it (SD15_SCALE=1)");
if (wanted && !pythonReady) throw new Error("SD15_SCALE=1 needs the training tools' Python (see the README)");

const full = (variant: Sd15Variant) => makeSd15({ variant, size: "full" }).then((m) => m.dir);
/** Torch float32 against ONNX Runtime at full width (measured: 7.3e-6 fp32, 4.4e-3 fp16). */
const PARITY_TOLERANCE: Record<Sd15Variant, number> = { "fp32": 1e-4, "scalar-timestep": 1e-4, "fp16": 2e-2 };

function scaleTest(name: string, fn: () => Promise<void>) {
  Deno.test({ name, ignore: !wanted, fn });
}

scaleTest("sd15 full: each variant is SD 1.5's size and matches torch", async () => {
  for (const variant of SD15_VARIANTS) {
    const { dir, info } = await makeSd15({ variant, size: "full" });
    assertEquals(info.parameters, { unet: 859_520_964, text_encoder: 123_060_480, vae: 83_653_863 });
    if (variant !== "fp16") {
      const data = await Deno.stat(join(dir, "unet/model.onnx_data"));
      assert(data.size > 2 ** 31, `external data of ${data.size} bytes`);
    }
    const differences = await checkParity(join(dir, "parity"), dir);
    console.log(variant, JSON.stringify(differences));
    for (const [output, difference] of Object.entries(differences)) {
      assert(difference <= PARITY_TOLERANCE[variant], `${variant} ${output}: ${difference}`);
    }
  }
});

scaleTest(
  "sd15 full: the published Smooth-LoRA key set on the >2 GiB fp32 graph and on fp16; mixed batch equals merged weights",
  async () => {
    const cache = await Deno.makeTempDir();
    try {
      for (const [variant, tolerance] of [["fp32", 1e-4], ["fp16", 5e-3]] as const) {
        const result = await checkMixedBatch(await full(variant), cache, tolerance);
        console.log(variant, JSON.stringify(result));
      }
    } finally {
      await Deno.remove(cache, { recursive: true });
    }
  },
);

scaleTest("sd15 full: every variant served with no code change at 128x128", async () => {
  const cache = await Deno.makeTempDir();
  try {
    for (const variant of SD15_VARIANTS) {
      const served = await checkServed(await full(variant), { CACHE_DIR: cache });
      console.log(variant, JSON.stringify(served));
      assertEquals(served.precision, variant === "fp16" ? "float16" : "float32");
    }
  } finally {
    await Deno.remove(cache, { recursive: true });
  }
});
