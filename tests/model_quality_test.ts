/**
 * The shipped model through the real pipeline: ONNX parity with torch, DDIM against the Python
 * reference sampler for the same noise, and the API's images scored by the same evaluator as
 * the model card.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { checkParity, readFixture } from "../support/parity.ts";
import { DiffusionModel } from "../pipeline/model.ts";
import { decodeToImages, initialNoise } from "../pipeline/generate.ts";
import { denoise } from "../pipeline/denoise.ts";
import { assertClose, FIXTURES_DIR, MODEL_DIR, post, testConfig, withServer } from "./helpers.ts";
import { pythonReady, runPython } from "../support/python.ts";

Deno.test("parity: every ONNX graph matches torch to 1e-4", async () => {
  const differences = await checkParity(`${FIXTURES_DIR}/parity`, MODEL_DIR);
  assertEquals(Object.keys(differences).length, 4);
  for (const [name, diff] of Object.entries(differences)) assert(diff <= 1e-4, `${name}: ${diff}`);
});

Deno.test("DDIM: the server's loop matches the Python reference sampler to 1e-4 for the same noise", async () => {
  const { fixture, tensor } = await readFixture(`${FIXTURES_DIR}/ddim`);
  const io = fixture.graphs.ddim;
  const model = await DiffusionModel.load(MODEL_DIR, "test", {
    batch: { enabled: true, maxRows: 64, maxWaitMs: 0 },
    executionProvider: "cpu",
    cacheDir: testConfig().cacheDir,
  });
  try {
    const shape = { rows: 1, height: 8, width: 8 };
    const noise = initialNoise(model, [fixture.seed as number], 8, 8);
    assertClose(noise, tensor(io.inputs[0]).data as Float32Array, 0, "x_T from the shared seeded noise");
    const both = await model.encodeText([fixture.prompt as string, ""]);
    const half = both.length / 2;
    const latent = await denoise(model, {
      latents: noise,
      shape,
      steps: fixture.steps as number,
      scheduler: "ddim",
      guidanceScale: fixture.guidance as number,
      adapters: [],
      conditioning: () => ({ cond: both.subarray(0, half), uncond: both.subarray(half) }),
    }, {});
    assertClose(latent, tensor(io.outputs[0]).data as Float32Array, 1e-4, "x_0");
    const [image] = await decodeToImages(model, latent, shape, {});
    assertClose(image.data, tensor(io.outputs[1]).data as Uint8Array, 1, "decoded pixels");
  } finally {
    await model.release();
  }
});

Deno.test({
  name: "quality: the API's images of the held-out pairs score within 3 points of the model card",
  ignore: !pythonReady,
  async fn() {
    const pairs: [string, number][] = JSON.parse(await Deno.readTextFile(`${FIXTURES_DIR}/held_out.json`));
    const card = JSON.parse(await Deno.readTextFile(`${MODEL_DIR}/quality.json`));
    const dir = await Deno.makeTempDir();
    try {
      await withServer({ MAX_CONCURRENT_REQUESTS: "256" }, async ({ url }) => {
        await Promise.all(pairs.map(async ([prompt, seed], i) => {
          const res = await post(`${url}/generate`, { prompt, seed, steps: 50, guidance_scale: 7.5 }, {
            accept: "image/png",
          });
          assertEquals(res.status, 200);
          await Deno.writeFile(`${dir}/${i}.png`, new Uint8Array(await res.arrayBuffer()));
        }));
      });
      const evaluator = new URL("../training/evaluator.py", import.meta.url).pathname;
      const api = JSON.parse(
        await runPython([evaluator, "--pairs", `${FIXTURES_DIR}/held_out.json`, "--images", dir]),
      );
      console.log(
        `all attributes: API ${(100 * api.all).toFixed(1)}%, model card ${
          (100 * card.generated.all).toFixed(1)
        }%`,
      );
      assert(Math.abs(api.all - card.generated.all) <= 0.03, JSON.stringify({ api, card: card.generated }));
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
