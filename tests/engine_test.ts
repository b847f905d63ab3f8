/** The engine in its worker: what crosses the boundary, and a worker that dies. */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { post, withServer } from "./helpers.ts";

const PROMPT = "a large red circle on a blue background";

Deno.test("engine: a worker that dies fails its requests with 503, readiness fails until a new one is up, then work goes on", async () => {
  await withServer({ ENGINE_FAULT_INJECTION: "1", MAX_STEPS: "1000" }, async ({ url, engine }) => {
    const long = post(`${url}/generate`, { prompt: PROMPT, steps: 1000 });
    while (engine.state.batches.unet.calls < 3) await new Promise((r) => setTimeout(r, 5));
    engine.injectFault();
    const failed = await long;
    const body = await failed.json();
    assertEquals([failed.status, body.error.code], [503, "engine_unavailable"], JSON.stringify(body));
    assertEquals(failed.headers.get("retry-after"), "1");

    const ready = await fetch(`${url}/health/ready`);
    assertEquals([ready.status, (await ready.json()).status], [503, "engine_starting"]);
    const live = await fetch(`${url}/health/live`);
    assertEquals(live.status, 200, "the server itself stays live");
    await live.body?.cancel();

    let health;
    for (const started = Date.now(); Date.now() - started < 60_000;) {
      health = await (await fetch(`${url}/health/ready`)).json();
      if (health.ready) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    assertEquals([health.ready, health.engine_restarts], [true, 1], JSON.stringify(health));
    const after = await post(`${url}/generate`, { prompt: PROMPT, steps: 2, seed: 1 });
    assertEquals(after.status, 200, "the restarted engine serves");
    assertEquals((await after.json()).images.length, 1);
  });
});

Deno.test("engine: without ENGINE_FAULT_INJECTION the fault message does nothing", async () => {
  await withServer({}, async ({ url, engine }) => {
    engine.injectFault();
    await new Promise((r) => setTimeout(r, 200));
    const res = await post(`${url}/generate`, { prompt: PROMPT, steps: 2, seed: 1 });
    assertEquals(res.status, 200);
    await res.arrayBuffer();
    assert(engine.ready);
    assertEquals(engine.restarts, 0);
  });
});
