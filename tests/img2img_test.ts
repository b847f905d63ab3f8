/** img2img on /generate (`image` + `strength`, SDEdit): through the same batcher as everything else. */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { decodeBase64, pixels, post, withModel, withServer } from "./helpers.ts";
import { pixelsToRgb, rgbToPixels } from "../pipeline/image.ts";
import { psnr } from "../pipeline/similarity.ts";
import sharp from "sharp";

const PROMPT = "a large red circle on a blue background";

async function rgbOf(b64: string) {
  const data = await pixels(b64);
  const { width, height } = await sharp(decodeBase64(b64)).metadata();
  return { data, width: width!, height: height! };
}

Deno.test("img2img: strength 0 is the VAE's reconstruction, 1 is text-to-image, between runs the remaining steps", async () => {
  await withServer({}, async ({ url, engine }) => {
    const source = await (await post(`${url}/generate`, {
      prompt: "a small green square on a yellow background",
      seed: 3,
      steps: 10,
    })).json();
    const image = source.images[0].data;
    const gen = async (extra: Record<string, unknown>) => {
      const res = await post(`${url}/generate`, { prompt: PROMPT, seed: 9, steps: 10, ...extra });
      const json = await res.json();
      assertEquals(res.status, 200, JSON.stringify(json));
      return json;
    };

    // strength 0: no step runs; the image's latent decoded
    const calls0 = engine.state.batches.unet.calls;
    const zero = await gen({ image, strength: 0 });
    assertEquals(engine.state.batches.unet.calls, calls0, "no UNet step at strength 0");
    const input = await rgbOf(image);
    const reconstruction = await withModel(async (model) => {
      const latent = await model.encodeImages(rgbToPixels(input), { rows: 1, height: 64, width: 64 });
      return pixelsToRgb(await model.decodeLatents(latent, { rows: 1, height: 8, width: 8 }), 0, 64, 64);
    });
    assertEquals(Array.from(await pixels(zero.images[0].data)), Array.from(reconstruction.data));
    assertEquals(zero.parameters.strength, 0);

    // strength 1: the image is ignored
    const text = await gen({});
    const one = await gen({ image, strength: 1 });
    assertEquals(one.images[0].data, text.images[0].data);

    // strength 0.5 of 10 steps: 5 UNet steps, an image between the input and the prompt's own
    const calls = engine.state.batches.unet.calls;
    const half = await gen({ image, strength: 0.5 });
    assertEquals(engine.state.batches.unet.calls - calls, 5);
    const halfRgb = await rgbOf(half.images[0].data), textRgb = await rgbOf(text.images[0].data);
    assert(
      psnr(halfRgb, input) > psnr(textRgb, input) + 3,
      `${psnr(halfRgb, input)} vs ${psnr(textRgb, input)} dB`,
    );
    assert(half.images[0].data !== zero.images[0].data);
  });
});

Deno.test("img2img: concurrent img2img and text-to-image requests share UNet runs; strength needs an image", async () => {
  await withServer({}, async ({ url, engine }) => {
    const image =
      (await (await post(`${url}/generate`, { prompt: PROMPT, seed: 1, steps: 4 })).json()).images[0].data;
    const before = { ...engine.state.batches.unet };
    const replies = await Promise.all([
      post(`${url}/generate`, { prompt: PROMPT, image, strength: 1, steps: 8, seed: 2 }),
      post(`${url}/generate`, { prompt: PROMPT, image, strength: 0.5, steps: 16, seed: 3 }),
      post(`${url}/generate`, { prompt: PROMPT, steps: 8, seed: 4 }),
    ]);
    assertEquals(replies.map((r) => r.status), [200, 200, 200]);
    await Promise.all(replies.map((r) => r.arrayBuffer()));
    const runs = engine.state.batches.unet.runs - before.runs,
      calls = engine.state.batches.unet.calls - before.calls;
    assertEquals(calls, 24);
    assert(runs < calls, `${runs} runs for ${calls} calls`);
    const refused = await post(`${url}/generate`, { prompt: PROMPT, strength: 0.5 });
    const json = await refused.json();
    assertEquals([refused.status, json.error.field], [400, "strength"]);
  });
});
