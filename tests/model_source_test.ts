import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { FakeHub } from "../support/hub_server.ts";
import { MODEL_DIR, post, withServer } from "./helpers.ts";

Deno.test("MODEL as a Hugging Face repo id: ONNX files fetched through @huggingface/hub into the Hub cache", async () => {
  const hub = new FakeHub();
  const cache = await Deno.makeTempDir();
  try {
    const files = await FakeHub.filesOfDirectory(MODEL_DIR);
    files["unet/diffusion_pytorch_model.safetensors"] = new Uint8Array(16); // not ONNX: never fetched
    const commit = await hub.addCommit("acme/tiny-shapes", files, { token: "hf_secret" });
    const env = {
      MODEL: "acme/tiny-shapes",
      HF_ENDPOINT: hub.url,
      HF_TOKEN: "hf_secret",
      HF_HUB_CACHE: cache,
    };
    const body = { prompt: "a large red circle on a blue background", seed: 11, steps: 6 };
    const fromHub = await withServer(env, async ({ url }) => {
      const models = await (await fetch(`${url}/v1/models`)).json();
      assertEquals(models.data[0].id, "acme/tiny-shapes");
      return (await (await post(`${url}/generate`, body)).json()).images[0].data;
    });
    const local = await withServer(
      {},
      async ({ url }) => (await (await post(`${url}/generate`, body)).json()).images[0].data,
    );
    assertEquals(fromHub, local);
    const snapshot = `${cache}/models--acme--tiny-shapes/snapshots/${commit}`;
    assert((await Deno.stat(`${snapshot}/unet/model.onnx`)).isFile);
    assert(!hub.requests.some((r) => r.path.endsWith(".safetensors")));
  } finally {
    await hub.close();
    await Deno.remove(cache, { recursive: true });
  }
});

Deno.test("MODEL as a repo id: a wrong token or a missing repo fails start-up with the hub's reason", async () => {
  const hub = new FakeHub();
  const cache = await Deno.makeTempDir();
  try {
    await hub.addCommit("acme/private", await FakeHub.filesOfDirectory(MODEL_DIR), { token: "hf_right" });
    for (const [model, token] of [["acme/private", "hf_wrong"], ["acme/absent", "hf_right"]]) {
      let message = "";
      try {
        await withServer(
          { MODEL: model, HF_ENDPOINT: hub.url, HF_TOKEN: token, HF_HUB_CACHE: cache },
          () => Promise.resolve(),
        );
      } catch (error) {
        message = String(error);
      }
      assert(/credentials|not found/i.test(message), message);
    }
  } finally {
    await hub.close();
    await Deno.remove(cache, { recursive: true });
  }
});
