import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { pixels, post, withServer } from "./helpers.ts";
import { maxAbsDifference } from "../support/parity.ts";

const prompts = [
  "a large red circle on a blue background",
  "a small green square on a white background",
  "a large yellow triangle on a black background",
  "a small purple cross on an orange background",
];

Deno.test("batching: concurrent requests with different prompts, steps and guidance share UNet runs", async () => {
  await withServer({}, async ({ url, engine }) => {
    const bodies = prompts.map((prompt, i) => ({
      prompt,
      seed: 10 + i,
      steps: 10 + 2 * i,
      guidance_scale: 5 + i,
    }));
    const alone = [];
    for (const body of bodies) alone.push(await (await post(`${url}/generate`, body)).json());
    const before = { ...engine.state.batches.unet };
    const together = await Promise.all(bodies.map(async (b) => (await post(`${url}/generate`, b)).json()));
    const runs = engine.state.batches.unet.runs - before.runs;
    const calls = engine.state.batches.unet.calls - before.calls;
    assertEquals(calls, 10 + 12 + 14 + 16);
    // Unbatched they take 52 runs; batched, the longest request's 16 plus the few runs by which the
    // others start late: they arrive one after another and each starts once its text is encoded,
    // since runs go back to back (pipeline/batcher.ts).
    assert(runs <= 24, `${calls} UNet calls took ${runs} runs; batched they need about 16`);
    for (let i = 0; i < bodies.length; i++) {
      // Same request alone or in a batch: the same image up to float rounding of a batched matmul.
      const diff = maxAbsDifference(
        await pixels(alone[i].images[0].data),
        await pixels(together[i].images[0].data),
      );
      assert(diff <= 2, `request ${i}: max pixel difference ${diff} between batched and alone`);
    }
  });
});

Deno.test("batching: a request that arrives mid-run joins the next runs at its own timestep", async () => {
  await withServer({ MAX_STEPS: "400" }, async ({ url, engine }) => {
    const before = { ...engine.state.batches.unet };
    const long = post(`${url}/generate`, { prompt: prompts[0], steps: 400, seed: 1 }, {
      accept: "text/event-stream",
    });
    const reader = (await long).body!.getReader();
    const decoder = new TextDecoder();
    let seen = "";
    while (!seen.includes('"step":10,')) seen += decoder.decode((await reader.read()).value);
    const late = await (await post(`${url}/generate`, { prompt: prompts[1], steps: 20, seed: 2 })).json();
    assertEquals(late.images.length, 1);
    while (!(await reader.read()).done);
    const runs = engine.state.batches.unet.runs - before.runs;
    const calls = engine.state.batches.unet.calls - before.calls;
    assertEquals(calls, 420);
    assert(
      runs <= 402,
      `the late request's 20 calls should ride along the long one's 400 runs; got ${runs} runs`,
    );
  });
});

Deno.test("batching: max rows per run is respected, and batching off runs one request per run", async () => {
  await withServer({ BATCH_MAX_ROWS: "4" }, async ({ url, engine }) => {
    await Promise.all(
      prompts.map((prompt) => post(`${url}/generate`, { prompt, steps: 5 }).then((r) => r.json())),
    );
    const { runs, rows } = engine.state.batches.unet;
    assertEquals(rows, 4 * 5 * 2);
    assert(runs >= 10 && runs < 20, `2-row calls, at most 4 rows per run: expected 10-19 runs, got ${runs}`);
  });
  await withServer({ BATCHING: "off" }, async ({ url, engine }) => {
    await Promise.all(
      prompts.map((prompt) => post(`${url}/generate`, { prompt, steps: 5 }).then((r) => r.json())),
    );
    assertEquals(engine.state.batches.unet.runs, engine.state.batches.unet.calls);
    assertEquals(engine.state.batches.textEncoder.runs, 4);
  });
});

Deno.test("batching: text encoder and VAE calls of concurrent requests are batched too", async () => {
  await withServer({}, async ({ url, engine }) => {
    await Promise.all(
      prompts.map((prompt) => post(`${url}/generate`, { prompt, steps: 3 }).then((r) => r.json())),
    );
    assertEquals(engine.state.batches.textEncoder.calls, 4);
    assert(
      engine.state.batches.textEncoder.runs < 4,
      `text encoder runs: ${engine.state.batches.textEncoder.runs}`,
    );
    assert(
      engine.state.batches.vaeDecoder.runs < 4,
      `VAE decoder runs: ${engine.state.batches.vaeDecoder.runs}`,
    );
  });
});

Deno.test("cancellation: a client that disconnects has its remaining steps cancelled", async () => {
  await withServer({}, async ({ url, engine }) => {
    const controller = new AbortController();
    const res = await post(`${url}/generate`, { prompt: prompts[2], steps: 150 }, {
      accept: "text/event-stream",
    }, controller.signal);
    const reader = res.body!.getReader();
    let seen = "";
    while (!seen.includes('"step":5,')) seen += new TextDecoder().decode((await reader.read()).value);
    controller.abort();
    await new Promise((r) => setTimeout(r, 300));
    const callsAfterAbort = engine.state.batches.unet.calls;
    await new Promise((r) => setTimeout(r, 300));
    assertEquals(engine.state.batches.unet.calls, callsAfterAbort, "no UNet calls after the client left");
    assert(callsAfterAbort < 150, `only part of the 150 steps ran: ${callsAfterAbort}`);
    const ok = await post(`${url}/generate`, { prompt: prompts[0], steps: 2 });
    assertEquals(ok.status, 200);
    await ok.body?.cancel();
  });
});
