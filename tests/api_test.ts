import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import sharp from "sharp";
import { decodeBase64, post, withServer } from "./helpers.ts";

const PROMPT = "a large red circle on a blue background";

Deno.test("POST /generate: JSON reply, seeds, parameters, timings; same seed gives identical bytes", async () => {
  await withServer({}, async ({ url }) => {
    const body = { prompt: PROMPT, seed: 1234, steps: 12, num_images: 2 };
    const first = await (await post(`${url}/generate`, body)).json();
    assertEquals(first.images.length, 2);
    assertEquals(first.images.map((i: any) => i.seed), [1234, 1235]);
    assertEquals(first.parameters.steps, 12);
    assertEquals(first.parameters.width, 64);
    for (const key of ["text_encode_ms", "denoise_ms", "decode_ms", "image_encode_ms", "total_ms"]) {
      assert(typeof first.timings[key] === "number", key);
    }
    const png = decodeBase64(first.images[0].data);
    const meta = await sharp(png).metadata();
    assertEquals([meta.format, meta.width, meta.height], ["png", 64, 64]);

    const again = await (await post(`${url}/generate`, body)).json();
    assertEquals(again.images[0].data, first.images[0].data);
    assertEquals(again.images[1].data, first.images[1].data);
    // Image i of a request is reproducible alone with its returned seed.
    const alone = await (await post(`${url}/generate`, { ...body, seed: 1235, num_images: 1 })).json();
    assertEquals(alone.images[0].data, first.images[1].data);
    const other = await (await post(`${url}/generate`, { ...body, seed: 99 })).json();
    assert(other.images[0].data !== first.images[0].data);

    const unseeded = await (await post(`${url}/generate`, { prompt: PROMPT, steps: 2 })).json();
    assert(Number.isInteger(unseeded.images[0].seed) && unseeded.parameters.seed === unseeded.images[0].seed);
  });
});

Deno.test("POST /generate: raw image by Accept, other formats, sizes and the euler scheduler", async () => {
  await withServer({}, async ({ url }) => {
    const raw = await post(`${url}/generate`, { prompt: PROMPT, seed: 5, steps: 4 }, {
      accept: "image/webp",
    });
    assertEquals(raw.status, 200);
    assertEquals(raw.headers.get("content-type"), "image/webp");
    assertEquals(raw.headers.get("x-seed"), "5");
    assertEquals((await sharp(new Uint8Array(await raw.arrayBuffer())).metadata()).format, "webp");

    const jpeg = await (await post(`${url}/generate`, {
      prompt: PROMPT,
      steps: 3,
      output_format: "jpeg",
      width: 72,
      height: 48,
    })).json();
    const meta = await sharp(decodeBase64(jpeg.images[0].data)).metadata();
    assertEquals([meta.format, meta.width, meta.height], ["jpeg", 72, 48]);

    const euler = await post(`${url}/generate`, { prompt: PROMPT, steps: 8, scheduler: "euler", seed: 5 });
    assertEquals(euler.status, 200);
    assertEquals((await euler.json()).parameters.scheduler, "euler");

    const many = await post(`${url}/generate`, { prompt: PROMPT, steps: 2, num_images: 2 }, {
      accept: "image/png",
    });
    assertEquals(many.status, 406);
    assertEquals((await many.json()).error.field, "num_images");
  });
});

Deno.test("POST /generate: server-sent progress events, then the result", async () => {
  await withServer({}, async ({ url }) => {
    const res = await post(`${url}/generate`, { prompt: PROMPT, seed: 3, steps: 5 }, {
      accept: "text/event-stream",
    });
    assertEquals(res.headers.get("content-type")?.startsWith("text/event-stream"), true);
    const text = await res.text();
    const events = text.trim().split("\n\n").map((block) => {
      const lines = block.split("\n");
      return {
        event: lines.find((l) => l.startsWith("event:"))?.slice(6).trim(),
        data: JSON.parse(lines.find((l) => l.startsWith("data:"))!.slice(5)),
      };
    });
    assertEquals(
      events.filter((e) => e.event === "progress").map((e) => e.data),
      [1, 2, 3, 4, 5].map((step) => ({ step, total: 5 })),
    );
    const result = events.at(-1)!;
    assertEquals(result.event, "result");
    const direct = await (await post(`${url}/generate`, { prompt: PROMPT, seed: 3, steps: 5 })).json();
    assertEquals(result.data.images[0].data, direct.images[0].data);
  });
});

Deno.test("errors: one JSON shape naming the field; 413 for oversize bodies; 404", async () => {
  await withServer({ MAX_BODY_BYTES: "4096", MAX_STEPS: "60", MAX_PIXELS: "16384" }, async ({ url }) => {
    const cases: [unknown, number, string, string | undefined][] = [
      ["{not json", 400, "invalid_json", undefined],
      [{}, 400, "invalid_request", "prompt"],
      [{ prompt: 7 }, 400, "invalid_request", "prompt"],
      [{ prompt: "x", steps: "ten" }, 400, "invalid_request", "steps"],
      [{ prompt: "x", steps: 61 }, 400, "limit_exceeded", "steps"],
      [{ prompt: "x", width: 60 }, 400, "invalid_request", "width"],
      [{ prompt: "x", width: 256, height: 128 }, 400, "limit_exceeded", "width"],
      [{ prompt: "x", seed: -1 }, 400, "invalid_request", "seed"],
      [{ prompt: "x", seed: 2 ** 32 }, 400, "invalid_request", "seed"],
      [{ prompt: "x", scheduler: "plms" }, 400, "invalid_request", "scheduler"],
      [{ prompt: "x", num_images: 9 }, 400, "limit_exceeded", "num_images"],
      [{ prompt: "x", guidance_scale: null }, 400, "invalid_request", "guidance_scale"],
      [{ prompt: "x", stepz: 3 }, 400, "invalid_request", undefined],
      [[1, 2], 400, "invalid_request", undefined],
      [{ prompt: "x".repeat(5000) }, 413, "payload_too_large", "body"],
    ];
    for (const [body, status, code, field] of cases) {
      const res = await post(`${url}/generate`, body);
      const json = await res.json();
      assertEquals([res.status, json.error.code], [status, code], JSON.stringify(body).slice(0, 80));
      if (field) assertEquals(json.error.field, field);
      assert(typeof json.error.message === "string" && json.error.message.length > 0);
    }
    const missing = await fetch(`${url}/nope`);
    assertEquals([missing.status, (await missing.json()).error.code], [404, "not_found"]);
  });
});

Deno.test("robustness: hundreds of malformed requests, then a valid one succeeds", async () => {
  await withServer({}, async ({ url }) => {
    const junk: unknown[] = ["", "null", "[]", "{", "\u0000\u0001", '{"prompt":', "true", "1e999"];
    const random = (i: number) => {
      const values = [null, -1, 1e12, "x", [], {}, true, 0.5, "9".repeat(50)];
      const keys = [
        "prompt",
        "steps",
        "width",
        "height",
        "seed",
        "num_images",
        "guidance_scale",
        "scheduler",
        "output_format",
      ];
      return Object.fromEntries(
        keys.filter((_, k) => (i >> k) & 1).map((k, j) => [k, values[(i + j) % values.length]]),
      );
    };
    let served = 0;
    for (let i = 0; i < 300; i++) {
      const body = i < junk.length ? junk[i] : JSON.stringify(random(i));
      const res = await post(`${url}/generate`, body);
      const json = await res.json();
      assert(res.status >= 400 && res.status < 500 || res.status === 200, `status ${res.status} for ${body}`);
      if (res.status !== 200) assert(json.error?.code, JSON.stringify(json));
      served++;
    }
    assertEquals(served, 300);
    const ok = await post(`${url}/generate`, { prompt: PROMPT, steps: 2 });
    assertEquals(ok.status, 200);
  });
});

Deno.test("queue full: 429 with Retry-After while accepted work completes", async () => {
  await withServer({ MAX_CONCURRENT_REQUESTS: "1" }, async ({ url }) => {
    const slow = post(`${url}/generate`, { prompt: PROMPT, steps: 150 });
    await new Promise((r) => setTimeout(r, 30));
    const rejected = await post(`${url}/generate`, { prompt: PROMPT, steps: 1 });
    assertEquals(rejected.status, 429);
    assert(Number(rejected.headers.get("retry-after")) >= 1);
    assertEquals((await rejected.json()).error.code, "queue_full");
    assertEquals((await slow).status, 200);
  });
});

Deno.test("GET /health, /v1/models, /openapi.json and /docs", async () => {
  await withServer({}, async ({ url }) => {
    const health = await (await fetch(`${url}/health`)).json();
    assertEquals([health.live, health.ready], [true, true]);
    const models = await (await fetch(`${url}/v1/models`)).json();
    assertEquals([models.data[0].native_width, models.data[0].native_height], [64, 64]);
    assertEquals(models.data[0].capabilities.per_row_timestep, true);
    const openapi = await (await fetch(`${url}/openapi.json`)).json();
    const schema = openapi.paths["/generate"].post.requestBody.content["application/json"].schema;
    assertEquals(schema.required, ["prompt"]);
    assertEquals(schema.properties.steps.default, 50);
    assertEquals(schema.properties.scheduler.enum, ["ddim", "euler"]);
    const docs = await fetch(`${url}/docs`);
    assert((await docs.text()).includes("POST /generate"));
  });
});
