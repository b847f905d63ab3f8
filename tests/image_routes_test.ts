import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import sharp from "sharp";
import { decodeBase64, pixels, post, testConfig, withServer } from "./helpers.ts";
import { ImageInputError, readImageInput } from "../pipeline/image_input.ts";
import { loadServing } from "../engine/load.ts";
import { Tasks } from "../engine/tasks.ts";

const PROMPT = "a large green circle on a black background";
const OTHER = "a small red square on a white background";

async function pngOf(
  width: number,
  height: number,
  rgb: [number, number, number],
  format: "png" | "gif" | "tiff" | "jpeg" = "png",
) {
  const img = sharp({
    create: { width, height, channels: 3, background: { r: rgb[0], g: rgb[1], b: rgb[2] } },
  });
  const bytes = await img.toFormat(format).toBuffer();
  return (new Uint8Array(bytes)).toBase64();
}

async function generated(url: string, prompt: string, seed: number): Promise<string> {
  const res = await post(`${url}/generate`, { prompt, seed, steps: 20 });
  return (await res.json()).images[0].data;
}

Deno.test("image input: undecodable, oversized and unsupported images get 400, 413 and 415 naming the field", async () => {
  await withServer({ MAX_IMAGE_BYTES: "4096" }, async ({ url }) => {
    const big = await sharp({
      create: {
        width: 256,
        height: 256,
        channels: 3,
        background: "#808080",
        noise: { type: "gaussian", mean: 128, sigma: 60 },
      },
    }).png().toBuffer();
    const cases: [unknown, number, string, string][] = [
      [{ image: btoa("definitely not an image"), prompt: "x", steps: 1 }, 400, "invalid_image", "image"],
      [{ image: "%%%not base64%%%", prompt: "x", steps: 1 }, 400, "invalid_image", "image"],
      [{ image: (new Uint8Array(big)).toBase64(), prompt: "x", steps: 1 }, 413, "image_too_large", "image"],
      [
        { image: await pngOf(8, 8, [1, 2, 3], "gif"), prompt: "x", steps: 1 },
        415,
        "unsupported_image",
        "image",
      ],
      [
        { image: await pngOf(8, 8, [1, 2, 3], "tiff"), prompt: "x", steps: 1 },
        415,
        "unsupported_image",
        "image",
      ],
      [{ prompt: "x" }, 400, "invalid_request", "image"],
    ];
    for (const [body, status, code, field] of cases) {
      const res = await post(`${url}/invert`, body);
      const json = await res.json();
      assertEquals(
        [res.status, json.error.code, json.error.field],
        [status, code, field],
        JSON.stringify(json),
      );
    }
    const interp = await post(`${url}/interpolate`, {
      from: { prompt: "a", image: btoa("nope") },
      to: { prompt: "b", seed: 1 },
      steps: 1,
    });
    assertEquals([interp.status, (await interp.json()).error.field], [400, "from.image"]);
    const dataUrl = `data:image/jpeg;base64,${await pngOf(120, 80, [200, 30, 30], "jpeg")}`;
    const ok = await post(`${url}/invert`, { image: dataUrl, prompt: "x", steps: 2, fit: "contain" });
    assertEquals(ok.status, 200);
  });
});

Deno.test("image input: only faults of the image are the client's (invalid_image); a fault of the server's is not blamed on it", async () => {
  const limits = { maxBytes: 1 << 20, maxPixels: 4096 * 4096 };
  const noisy = sharp({
    create: {
      width: 64,
      height: 64,
      channels: 3,
      background: "#3060a0",
      noise: { type: "gaussian", mean: 128, sigma: 40 },
    },
  });
  for (const format of ["png", "jpeg", "webp"] as const) {
    const valid = new Uint8Array(await noisy.clone().toFormat(format).toBuffer());
    const flipped = valid.slice();
    for (let i = 0; i < 60; i++) flipped[40 + ((i * 7919) % (valid.length - 40))] ^= 0x5a;
    for (
      const [what, bytes] of [["truncated", valid.slice(0, valid.length >> 1)], ["flipped", flipped]] as const
    ) {
      const error = await readImageInput(bytes.toBase64(), 64, 64, "cover", limits).then(
        () => undefined,
        (e) => e,
      );
      if (error === undefined && what === "flipped") continue; // some damage still decodes
      assert(
        error instanceof ImageInputError && error.kind === "undecodable",
        `${what} ${format}: ${error?.message}`,
      );
    }
  }
  // The server asking sharp for something impossible (a zero-pixel target) is the server's fault.
  const valid = (new Uint8Array(await noisy.clone().png().toBuffer())).toBase64();
  const fault = await readImageInput(valid, 0, 64, "cover", limits).then(() => undefined, (e) => e);
  assert(fault instanceof Error, "a zero-pixel target cannot succeed");
  assert(
    !(fault instanceof ImageInputError),
    `the server's fault reported as the client's: ${(fault as ImageInputError).kind}: ${fault.message}`,
  );
});

Deno.test("image input: admission comes before decoding (429 before any decode); the image is still checked once admitted", async () => {
  await withServer({ MAX_CONCURRENT_REQUESTS: "1", MAX_STEPS: "1000" }, async ({ url }) => {
    const bad = btoa("definitely not an image");
    const requests: [string, Record<string, unknown>, string][] = [
      ["/invert", { image: bad, prompt: "x", steps: 1 }, "image"],
      ["/edit", { image: bad, source_prompt: "x", target_prompt: "y", steps: 1 }, "image"],
      [
        "/interpolate",
        { from: { prompt: "a", image: bad }, to: { prompt: "b", seed: 1 }, steps: 1 },
        "from.image",
      ],
    ];
    // One long request holds the only slot.
    const leave = new AbortController();
    const long = await post(`${url}/generate`, { prompt: PROMPT, steps: 1000 }, {
      accept: "text/event-stream",
    }, leave.signal);
    const reader = long.body!.pipeThrough(new TextDecoderStream()).getReader();
    while (!(await reader.read()).value?.includes('"step"'));
    for (const [route, body] of requests) {
      const res = await post(`${url}${route}`, body);
      assertEquals([route, res.status, (await res.json()).error.code], [route, 429, "queue_full"]);
    }
    leave.abort();
    await reader.cancel().catch(() => {});
    for (const [route, body, field] of requests) {
      let res = await post(`${url}${route}`, body);
      // The slot comes back once the cancelled request has ended.
      while (res.status === 429) {
        await res.body?.cancel();
        await new Promise((r) => setTimeout(r, 20));
        res = await post(`${url}${route}`, body);
      }
      const json = await res.json();
      assertEquals([route, res.status, json.error.code, json.error.field], [
        route,
        400,
        "invalid_image",
        field,
      ]);
    }
  });
});

Deno.test("/invert returns x_T, a reconstruction and metrics; /edit at ratio 0 from that latent equals the reconstruction", async () => {
  await withServer({}, async ({ url }) => {
    const image = await generated(url, PROMPT, 21);
    const inv = await (await post(`${url}/invert`, { image, prompt: PROMPT, steps: 20, guidance_scale: 3 }))
      .json();
    assertEquals([inv.latent.shape, inv.latent.dtype], [[1, 4, 8, 8], "float32"]);
    assertEquals(decodeBase64(inv.latent.data).length, 4 * 256);
    for (const key of ["psnr", "ssim"]) {
      assert(
        Number.isFinite(inv.metrics[key]) && Number.isFinite(inv.metrics.upper_bound[key]),
        JSON.stringify(inv.metrics),
      );
    }
    assert(
      inv.metrics.upper_bound.psnr >= inv.metrics.psnr - 1e-9 || inv.metrics.psnr > 35,
      JSON.stringify(inv.metrics),
    );
    const fromLatent = await (await post(`${url}/edit`, {
      latent: inv.latent,
      source_prompt: PROMPT,
      target_prompt: OTHER,
      ratio: 0,
      steps: 20,
      guidance_scale: 3,
    })).json();
    assertEquals(fromLatent.images[0].data, inv.reconstruction.data);
    const fromImage = await (await post(`${url}/edit`, {
      image,
      source_prompt: PROMPT,
      target_prompt: OTHER,
      ratio: 0,
      steps: 20,
      guidance_scale: 3,
      return_reconstruction: true,
    })).json();
    assertEquals(fromImage.images[0].data, inv.reconstruction.data);
    assertEquals(fromImage.reconstruction.data, inv.reconstruction.data);
    const edited = await (await post(`${url}/edit`, {
      latent: inv.latent,
      source_prompt: PROMPT,
      target_prompt: OTHER,
      ratio: 0.8,
      steps: 20,
    })).json();
    assert(edited.images[0].data !== fromLatent.images[0].data);
    const both = await post(`${url}/edit`, {
      image,
      latent: inv.latent,
      source_prompt: "a",
      target_prompt: "b",
    });
    assertEquals([both.status, (await both.json()).error.field], [400, "image"]);
    const badLatent = await post(`${url}/edit`, {
      latent: { ...inv.latent, shape: [1, 3, 8, 8] },
      source_prompt: "a",
      target_prompt: "b",
    });
    assertEquals([badLatent.status, (await badLatent.json()).error.code], [400, "invalid_latent"]);
  });
});

Deno.test("/interpolate: the end frames are /generate's images for the same prompt and seed; distances and ISTD", async () => {
  // One request per model run: every frame is computed exactly as /generate computes it.
  await withServer({ BATCHING: "off" }, async ({ url }) => {
    const res = await post(`${url}/interpolate`, {
      from: { prompt: PROMPT, seed: 3 },
      to: { prompt: OTHER, seed: 4 },
      frames: 5,
      steps: 20,
      animation: "webp",
    });
    const json = await res.json();
    assertEquals(res.status, 200, JSON.stringify(json));
    assertEquals(json.frames.length, 5);
    assertEquals(json.frames[0].data, await generated(url, PROMPT, 3));
    assertEquals(json.frames[4].data, await generated(url, OTHER, 4));
    assertEquals(json.distances.length, 4);
    assert(json.distances.every((d: number) => d >= 0));
    const mean = json.distances.reduce((a: number, b: number) => a + b, 0) / 4;
    const std = Math.sqrt(json.distances.reduce((a: number, b: number) => a + (b - mean) ** 2, 0) / 4);
    assert(Math.abs(std - json.istd) < 1e-5, `istd ${json.istd} vs ${std}`);
    assertEquals(json.pixel_range, [0, 1]);
    const meta = await sharp(decodeBase64(json.animation.data), { animated: true }).metadata();
    assertEquals([meta.format, meta.pages], ["webp", 5]);
  });
});

Deno.test("/interpolate: frames run as concurrent tracks that share UNet runs; image and latent endpoints", async () => {
  await withServer({}, async ({ url, engine }) => {
    const before = { ...engine.state.batches.unet };
    const res = await post(`${url}/interpolate`, {
      from: { prompt: PROMPT, seed: 3 },
      to: { prompt: OTHER, seed: 4 },
      frames: 11,
      steps: 10,
    });
    assertEquals(res.status, 200);
    const runs = engine.state.batches.unet.runs - before.runs,
      calls = engine.state.batches.unet.calls - before.calls;
    assertEquals(calls, 110);
    assert(runs <= 12, `11 frames x 10 steps in ${runs} runs`);
    const image = await generated(url, PROMPT, 5);
    const inv = await (await post(`${url}/invert`, { image, prompt: PROMPT, steps: 10 })).json();
    const mixed = await post(`${url}/interpolate`, {
      from: { prompt: PROMPT, image },
      to: { prompt: OTHER, latent: inv.latent },
      frames: 3,
      steps: 10,
      animation: "gif",
    });
    const json = await mixed.json();
    assertEquals(mixed.status, 200, JSON.stringify(json));
    assertEquals([json.frames.length, json.parameters.from.source, json.parameters.to.source], [
      3,
      "image",
      "latent",
    ]);
    assertEquals((await sharp(decodeBase64(json.animation.data), { animated: true }).metadata()).pages, 3);
  });
});

Deno.test("inversion: the model's own images reconstruct, and fixed-point inversion beats plain DDIM on the same images", async () => {
  const captions = [
    "a large red circle on a blue background",
    "a small yellow triangle on a black background",
    "a large white cross on a green background",
    "a small purple square on an orange background",
  ];
  await withServer({}, async ({ url }) => {
    const images = await Promise.all(
      captions.map((c, i) =>
        post(`${url}/generate`, { prompt: c, seed: 40 + i, steps: 50 }).then((r) => r.json())
      ),
    );
    const psnrOf = async (method: string) => {
      const results = await Promise.all(
        captions.map((c, i) =>
          post(`${url}/invert`, { image: images[i].images[0].data, prompt: c, steps: 50, method }).then((r) =>
            r.json()
          )
        ),
      );
      return [
        results.map((r) => r.metrics.psnr as number),
        results.map((r) => r.metrics.vs_vae_reconstruction.psnr as number),
      ];
    };
    const [ddim, ddimVae] = await psnrOf("ddim"), [fixed, fixedVae] = await psnrOf("fixed-point");
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    console.log(
      `reconstruction PSNR of ${captions.length} generated images, 50 steps, against the input (against the VAE's own ` +
        `reconstruction): ddim ${mean(ddim).toFixed(2)} dB (${mean(ddimVae).toFixed(2)}), ` +
        `fixed-point ${mean(fixed).toFixed(2)} dB (${mean(fixedVae).toFixed(2)})`,
    );
    assert(mean(fixed) > mean(ddim), `fixed-point ${fixed} vs ddim ${ddim}`);
    assert(mean(ddim) > 15, `DDIM inversion reconstructs its own images: ${ddim}`);
  });
});

Deno.test("ISTD: the mean over prompts of the std of adjacent-frame distances, as /interpolate reports per pair", async () => {
  const { istdOf } = await import("../pipeline/istd.ts");
  await withServer({}, async ({ url }) => {
    const prompts = [PROMPT, OTHER];
    const seeds: [number, number][] = [[11, 12], [13, 14]];
    // in process, through the engine's interpolate task as tools/evaluate.ts measures it
    const { model, adapters } = await loadServing(testConfig());
    const measured = await Promise.all(prompts.map((prompt, i) =>
      new Tasks(model, adapters).interpolate({
        from: { prompt, seed: seeds[i][0] },
        to: { prompt, seed: seeds[i][1] },
        shape: { rows: 1, height: model.info.nativeHeight / 8, width: model.info.nativeWidth / 8 },
        frames: 4,
        steps: 6,
        method: "ddim",
        guidanceScale: 7.5,
        lora: [],
      }, {})
    )).then(istdOf).finally(() => model.release());
    const viaApi = await Promise.all(prompts.map(async (prompt, i) => {
      const res = await post(`${url}/interpolate`, {
        from: { prompt, seed: seeds[i][0] },
        to: { prompt, seed: seeds[i][1] },
        frames: 4,
        steps: 6,
      });
      return await res.json();
    }));
    viaApi.forEach(({ istd }, i) =>
      assert(
        Math.abs(istd - measured.perPrompt[i]) <= 0.02 * istd + 1e-3,
        `${istd} vs ${measured.perPrompt[i]}`,
      )
    );
    assert(Math.abs(measured.istd - (measured.perPrompt[0] + measured.perPrompt[1]) / 2) < 1e-12);
    // the scale-free companions: mean distance, ISTD / mean, and the seeds' own distance
    const mean = (v: number[]) => v.reduce((a, b) => a + b, 0) / v.length;
    const means = viaApi.map((r) => mean(r.distances));
    const close = (a: number, b: number, what: string) =>
      assert(Math.abs(a - b) <= 0.02 * b + 1e-3, `${what}: ${a} vs ${b}`);
    close(measured.meanDistance, mean(means), "mean adjacent distance");
    close(measured.istdOverMean, mean(viaApi.map((r, i) => r.istd / means[i])), "ISTD / mean");
    const endpoints = await Promise.all(viaApi.map(async (r) => {
      const [first, last] = [r.frames[0].data, r.frames[r.frames.length - 1].data].map((d) => pixels(d));
      const [a, b] = await Promise.all([first, last]);
      return Math.sqrt(a.reduce((s: number, v: number, k: number) => s + ((v - b[k]) / 255) ** 2, 0));
    }));
    close(measured.endpointDistance, mean(endpoints), "seed diversity");
    assert(measured.endpointDistance > 0 && measured.endpointDistance < measured.meanDistance * 4);
  });
});
