/** The OpenAI Images API, with the official `openai` npm SDK as the client against the running server. */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import OpenAI, { toFile } from "openai";
import sharp from "sharp";
import { decodeBase64, pixels, post, withServer } from "./helpers.ts";

const PROMPT = "a large red circle on a blue background";
/** This server's extensions ride along in the SDK's request body. */
type Extended = OpenAI.Images.ImageGenerateParamsNonStreaming & Record<string, unknown>;

Deno.test("OpenAI SDK: images.generate returns the same images as /generate; errors in OpenAI's shape", async () => {
  await withServer({}, async ({ url }) => {
    const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "unused", maxRetries: 0 });
    const result = await client.images.generate({
      model: "tiny-sd-shapes",
      prompt: PROMPT,
      n: 2,
      size: "64x64",
      response_format: "b64_json",
      quality: "auto",
      seed: 7,
      steps: 6,
    } as Extended);
    assertEquals(result.data!.length, 2);
    const native = await (await post(`${url}/generate`, { prompt: PROMPT, num_images: 2, seed: 7, steps: 6 }))
      .json();
    for (let i = 0; i < 2; i++) {
      const bytes = decodeBase64(result.data![i].b64_json!);
      const meta = await sharp(bytes).metadata();
      assertEquals([meta.format, meta.width, meta.height], ["png", 64, 64]);
      assertEquals(
        Array.from(await pixels(result.data![i].b64_json!)),
        Array.from(await pixels(native.images[i].data)),
      );
    }

    const failure = async (params: Record<string, unknown>) => {
      try {
        await client.images.generate({ prompt: PROMPT, steps: 2, ...params } as Extended);
      } catch (error) {
        if (error instanceof OpenAI.APIError) return error;
        throw error;
      }
      throw new Error(`accepted ${JSON.stringify(params)}`);
    };
    const size = await failure({ size: "100x100" });
    assertEquals([size.status, (size.error as { param: string }).param, size.type], [
      400,
      "size",
      "invalid_request_error",
    ]);
    const url_ = await failure({ response_format: "url" });
    assertEquals([url_.status, (url_.error as { param: string }).param], [400, "response_format"]);
    const style = await failure({ style: "vivid" });
    assertEquals([style.status, (style.error as { param: string }).param], [400, "style"]);
    const model = await failure({ model: "dall-e-3" });
    assertEquals([model.status, (model.error as { code: string }).code], [404, "model_not_found"]);
    const tooMany = await failure({ n: 100 });
    assertEquals([tooMany.status, (tooMany.error as { param: string }).param], [400, "n"]);
  });
});

Deno.test("OpenAI SDK: images.edit sends the image as multipart and gets img2img back; a mask is refused", async () => {
  await withServer({}, async ({ url }) => {
    const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "unused", maxRetries: 0 });
    const source = (await (await post(`${url}/generate`, {
      prompt: "a small green square on a yellow background",
      seed: 3,
      steps: 6,
    })).json())
      .images[0].data;
    const image = await toFile(decodeBase64(source), "source.png", { type: "image/png" });
    const edited = await client.images.edit(
      {
        image,
        prompt: PROMPT,
        size: "64x64",
        seed: 5,
        steps: 10,
        strength: 0.5,
      } as OpenAI.Images.ImageEditParamsNonStreaming & Record<string, unknown>,
    );
    assertEquals(edited.data!.length, 1);
    const native = await (await post(`${url}/generate`, {
      prompt: PROMPT,
      image: source,
      strength: 0.5,
      seed: 5,
      steps: 10,
    })).json();
    assertEquals(
      Array.from(await pixels(edited.data![0].b64_json!)),
      Array.from(await pixels(native.images[0].data)),
    );
    try {
      await client.images.edit({
        image: await toFile(decodeBase64(source), "a.png"),
        mask: await toFile(decodeBase64(source), "m.png"),
        prompt: PROMPT,
      });
      throw new Error("a mask was accepted");
    } catch (error) {
      assert(error instanceof OpenAI.APIError, String(error));
      assertEquals([error.status, (error.error as { param: string }).param], [400, "mask"]);
    }
  });
});
