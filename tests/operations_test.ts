import { deepStrictEqual as assertEquals, ok as assert, rejects as assertRejects } from "node:assert/strict";
import { metricValue, post, spawnMain, testConfig, withServer } from "./helpers.ts";
import { startServer } from "../server.ts";
import { AUTO_ORDER, selectProvider } from "../pipeline/execution_provider.ts";
import { Hono } from "hono";
import { deadline } from "../routes/access.ts";

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

  // The real thing on this machine (no GPU, no CUDA provider): auto skips CUDA and serves on the
  // first provider after it that loads (WebGPU where a Vulkan driver Dawn accepts is installed,
  // as .ci/run installs one, and tests/webgpu_test.ts checks; else the CPU), and /v1/models says so.
  await withServer({ EXECUTION_PROVIDER: "auto" }, async ({ url }) => {
    const model = (await (await fetch(`${url}/v1/models`)).json()).data[0];
    assertEquals(model.execution_provider_choice, "auto");
    assert(["webgpu", "cpu"].includes(model.execution_provider), model.execution_provider);
    assertEquals(
      model.execution_providers_skipped.map((s: { provider: string }) => s.provider),
      AUTO_ORDER.slice(0, AUTO_ORDER.indexOf(model.execution_provider)),
    );
  });
  await assertRejects(
    withServer({ EXECUTION_PROVIDER: "cuda" }, () => Promise.resolve()),
    /no execution provider could run the model \(cuda:.*\)\. Fix: install onnxruntime-node's CUDA 12 provider/,
  );
});

Deno.test("start-up: a provider that cannot run the model stops main.ts with one line naming it and the fix", async () => {
  let failure = "";
  try {
    await (await spawnMain({ EXECUTION_PROVIDER: "cuda" }, { stderr: true })).stop();
  } catch (error) {
    failure = (error as Error).message;
  }
  assert(failure, "main.ts served on a provider that is not installed");
  const lines = failure.split("\n").slice(1).filter((l) => l.trim() !== "");
  assertEquals(lines.length, 1, failure);
  assert(
    /^cannot start: no execution provider could run the model \(cuda: .*Fix: install/.test(lines[0]),
    lines[0],
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
    const requests = (status: string) =>
      metricValue(url, "http_server_request_duration_count", {
        http_request_method: "POST",
        http_route: "/generate",
        http_response_status_code: status,
      });
    assertEquals([await requests("200"), await requests("400")], [2, 1], text);
    assertEquals(await metricValue(url, "sd_unet_batch_rows_count"), 6);
    assertEquals(await metricValue(url, "sd_unet_run_duration_bucket", { le: "+Inf" }), 6);
    for (
      const name of [
        "sd_queue_depth",
        "sd_requests_in_flight",
        "sd_adapter_cache_hits_total",
        "sd_adapter_cache_size",
        "process_memory_usage",
        "v8js_memory_heap_used",
      ]
    ) {
      assert(await metricValue(url, name) >= 0, name);
    }
    assert(text.includes('target_info{service_name="smooth-diffusion-server"'), text.slice(0, 300));
  });
});

Deno.test("graceful shutdown: SIGTERM drains (readiness 503, new work 503), the in-flight request completes, exit 0", async () => {
  // A request long enough to be still running through the drain on any machine.
  const { url, child } = await spawnMain({ SHUTDOWN_DRAIN_DELAY_MS: "400", MAX_STEPS: "400" });
  const res = await post(`${url}/generate`, {
    prompt: "a large blue cross on a white background",
    steps: 400,
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

Deno.test("access: API keys (same 401 for missing and wrong keys; health stays open), CORS, per-request deadline", async () => {
  await withServer({ API_KEYS: "key-one,key-two", CORS_ORIGINS: "https://app.example" }, async ({ url }) => {
    const body = { prompt: "a small red circle on a blue background", steps: 2 };
    const missing = await post(`${url}/generate`, body);
    const wrong = await post(`${url}/generate`, body, { authorization: "Bearer key-on" });
    const missingText = await missing.text(), wrongText = await wrong.text();
    assertEquals([missing.status, wrong.status], [401, 401]);
    assertEquals(missingText, wrongText, "nothing tells which part failed");
    assertEquals(missing.headers.get("www-authenticate")?.startsWith("Bearer"), true);
    assertEquals((await post(`${url}/generate`, body, { authorization: "Bearer key-two" })).status, 200);
    assertEquals((await fetch(`${url}/v1/models`)).status, 401);
    assertEquals((await fetch(`${url}/health`)).status, 200);

    const preflight = await fetch(`${url}/generate`, {
      method: "OPTIONS",
      headers: {
        origin: "https://app.example",
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type",
      },
    });
    assertEquals(preflight.headers.get("access-control-allow-origin"), "https://app.example");
    await preflight.body?.cancel();
    const foreign = await fetch(`${url}/health`, { headers: { origin: "https://evil.example" } });
    assertEquals(foreign.headers.get("access-control-allow-origin"), null);
    await foreign.body?.cancel();
  });
  await withServer({ REQUEST_TIMEOUT_MS: "300", MAX_STEPS: "1000" }, async ({ url, engine }) => {
    const late = await post(`${url}/generate`, {
      prompt: "a large white square on a black background",
      steps: 1000,
    });
    assertEquals([late.status, (await late.json()).error.code], [504, "deadline_exceeded"]);
    const streamed = await post(`${url}/generate`, {
      prompt: "a small black circle on a white background",
      steps: 1000,
    }, {
      accept: "text/event-stream",
    });
    assert(
      (await streamed.text()).includes("deadline_exceeded"),
      "a streaming reply ends with the deadline error event",
    );
    const calls = engine.state.batches.unet.calls;
    await new Promise((r) => setTimeout(r, 200));
    assertEquals(engine.state.batches.unet.calls, calls, "its remaining steps were cancelled");
    assertEquals((await post(`${url}/generate`, { prompt: "x", steps: 1 })).status, 200);
  });
});

Deno.test("access: a request that finishes ends its deadline and its client listener: nothing aborts it afterwards", async () => {
  const app = new Hono<{ Variables: { signal: AbortSignal } }>();
  app.use("*", deadline(100));
  const signals: AbortSignal[] = [];
  app.get("/quick", (c) => {
    signals.push(c.get("signal"));
    return c.text("done");
  });
  const client = new AbortController();
  const res = await app.request(new Request("http://server/quick", { signal: client.signal }));
  assertEquals([res.status, await res.text()], [200, "done"]);
  // Well past the 100 ms deadline: its timer, had it been left running, has fired by now.
  await new Promise((r) => setTimeout(r, 400));
  assert(!signals[0].aborted, `the finished request was aborted afterwards: ${signals[0].reason}`);
  client.abort();
  assert(!signals[0].aborted, "the client's abort listener outlived the request");
});

Deno.test("shutdown: past the shutdown deadline the requests' work is stopped (503) before the model is released", async () => {
  const server = await startServer(
    testConfig({ SHUTDOWN_DRAIN_DELAY_MS: "0", SHUTDOWN_TIMEOUT_MS: "200", MAX_STEPS: "1000" }),
    { quiet: true },
  );
  const prompt = "a large blue cross on a white background";
  const streamed = await post(`${server.url}/generate`, { prompt, steps: 1000 }, {
    accept: "text/event-stream",
  });
  const reader = streamed.body!.pipeThrough(new TextDecoderStream()).getReader();
  let stream = "";
  while (!stream.includes('"step":2,')) stream += (await reader.read()).value;
  const plain = post(`${server.url}/generate`, { prompt, steps: 1000 });
  while ((await (await fetch(`${server.url}/health`)).json()).in_flight < 2);
  await server.close();
  const runs = server.engine.state.batches.unet.runs;
  for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) stream += chunk.value;
  const last = stream.trim().split("\n\n").at(-1)!;
  assert(last.startsWith("event: error") && last.includes('"shutting_down"'), last);
  const res = await plain;
  assertEquals([res.status, (await res.json()).error.code], [503, "shutting_down"]);
  assertEquals(server.engine.state.batches.unet.runs, runs, "no run after close");
});

Deno.test("app: the run listener an app adds to the engine leaves with it when the server closes", async () => {
  const server = await startServer(testConfig(), { quiet: true });
  const listeners = server.engine.runListeners;
  assertEquals(listeners.size, 1, "the app's metrics listener");
  await server.close();
  assertEquals(listeners.size, 0, "the closed app's listener is still on the engine");
});
