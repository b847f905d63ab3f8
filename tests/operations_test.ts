import { deepStrictEqual as assertEquals, ok as assert, rejects as assertRejects } from "node:assert/strict";
import { post, spawnMain, withServer } from "./helpers.ts";
import { selectProvider } from "../pipeline/execution_provider.ts";

Deno.test("execution provider: auto falls back to the best that loads and says why; an explicit one must load", async () => {
  const tried: string[] = [];
  const picked = await selectProvider("auto", (p) => {
    tried.push(p);
    return p === "cpu" ? Promise.resolve() : Promise.reject(new Error(`${p} library missing`));
  });
  assertEquals([picked.provider, tried, picked.skipped.map((s) => s.reason)], ["cpu", [
    "cuda",
    "webgpu",
    "cpu",
  ], ["cuda library missing", "webgpu library missing"]]);
  await assertRejects(
    selectProvider("cuda", () => Promise.reject(new Error("no libcudart"))),
    /cuda: no libcudart/,
  );

  // The real thing on this machine (no GPU): auto serves on the CPU and /v1/models says so.
  await withServer({ EXECUTION_PROVIDER: "auto" }, async ({ url }) => {
    const model = (await (await fetch(`${url}/v1/models`)).json()).data[0];
    assertEquals([model.execution_provider, model.execution_provider_choice], ["cpu", "auto"]);
    assertEquals(model.execution_providers_skipped.map((s: { provider: string }) => s.provider), [
      "cuda",
      "webgpu",
    ]);
  });
  await assertRejects(
    withServer({ EXECUTION_PROVIDER: "cuda" }, () => Promise.resolve()),
    /no execution provider could be loaded \(cuda:/,
  );
});

Deno.test("metrics: Prometheus text with requests by route and status, batch rows, UNet run latency, adapter cache", async () => {
  await withServer({}, async ({ url }) => {
    for (let i = 0; i < 2; i++) {
      await (await post(`${url}/generate`, { prompt: "a small red circle on a blue background", steps: 3 }))
        .arrayBuffer();
    }
    await (await post(`${url}/generate`, { prompt: 1 })).arrayBuffer();
    const res = await fetch(`${url}/metrics`);
    assertEquals(res.headers.get("content-type")?.startsWith("text/plain"), true);
    const text = await res.text();
    assert(text.includes('sd_requests_total{route="/generate",method="POST",status="200"} 2'), text);
    assert(text.includes('sd_requests_total{route="/generate",method="POST",status="400"} 1'), text);
    assert(/sd_unet_batch_rows_count 6\b/.test(text), text);
    assert(/sd_unet_run_seconds_bucket\{le="\+Inf"\} 6\b/.test(text), text);
    for (
      const name of [
        "sd_queue_depth",
        "sd_requests_in_flight",
        "sd_adapter_cache_hits_total",
        "sd_adapter_cache_bytes",
      ]
    ) {
      assert(new RegExp(`^${name} \\d+`, "m").test(text), name);
    }
  });
});

Deno.test("graceful shutdown: SIGTERM drains (readiness 503, new work 503), the in-flight request completes, exit 0", async () => {
  const { url, child } = await spawnMain({ SHUTDOWN_DRAIN_DELAY_MS: "400" });
  const res = await post(`${url}/generate`, {
    prompt: "a large blue cross on a white background",
    steps: 80,
    seed: 2,
  }, { accept: "text/event-stream" });
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let stream = "";
  while (!stream.includes('"step":3,')) stream += (await reader.read()).value;
  child.kill("SIGTERM");
  await new Promise((r) => setTimeout(r, 100));
  const health = await fetch(`${url}/health`);
  assertEquals([health.status, (await health.json()).status], [503, "draining"]);
  const refused = await post(`${url}/generate`, { prompt: "x", steps: 1 });
  assertEquals([refused.status, (await refused.json()).error.code, refused.headers.get("retry-after")], [
    503,
    "draining",
    "1",
  ]);
  for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) stream += chunk.value;
  assert(stream.includes("event: result"), "the in-flight request finished with its result");
  assertEquals((await child.status).code, 0);
});
