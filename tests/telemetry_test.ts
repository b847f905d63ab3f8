import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { post, spawnMain } from "./helpers.ts";

interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  attributes?: { key: string; value: Record<string, unknown> }[];
  links?: { traceId: string; spanId: string }[];
}

interface OtlpMetric {
  name: string;
  histogram?: { dataPoints: { attributes?: OtlpSpan["attributes"]; count: string | number }[] };
}

/** A loopback OTLP/HTTP (JSON) receiver that keeps every span and metric it is sent. */
function startReceiver() {
  const spans: OtlpSpan[] = [];
  const metrics: OtlpMetric[] = [];
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen: () => {} }, async (req) => {
    const path = new URL(req.url).pathname;
    if (req.method === "POST" && path === "/v1/traces") {
      const body = await req.json();
      for (const rs of body.resourceSpans ?? []) {
        for (const ss of rs.scopeSpans ?? []) spans.push(...ss.spans);
      }
      return Response.json({});
    }
    if (req.method === "POST" && path === "/v1/metrics") {
      const body = await req.json();
      for (const rm of body.resourceMetrics ?? []) {
        for (const sm of rm.scopeMetrics ?? []) metrics.push(...sm.metrics);
      }
      return Response.json({});
    }
    return new Response("not found", { status: 404 });
  });
  return {
    spans,
    metrics,
    url: `http://127.0.0.1:${(server.addr as Deno.NetAddr).port}`,
    close: () => server.shutdown(),
  };
}

const attr = (span: OtlpSpan, key: string) => {
  const value = span.attributes?.find((a) => a.key === key)?.value;
  return value ? Object.values(value)[0] : undefined;
};

Deno.test("telemetry: one /generate exports its span tree over OTLP to a loopback receiver", async () => {
  const receiver = startReceiver();
  const main = await spawnMain({
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
    OTEL_SERVICE_NAME: "telemetry-test",
  });
  try {
    const url = main.url;
    const res = await post(`${url}/generate`, {
      prompt: "a small red circle on a blue background",
      steps: 4,
      seed: 1,
    });
    assertEquals(res.status, 200);
    await res.body?.cancel();

    const deadline = Date.now() + 10_000;
    let root: OtlpSpan | undefined;
    while (Date.now() < deadline) {
      root = receiver.spans.find((s) => s.name === "POST /generate");
      if (root && receiver.spans.filter((s) => s.name === "unet.run").length >= 4) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert(root, "the request span arrived");
    assertEquals(root.parentSpanId ?? "", "");
    assertEquals(attr(root, "http.response.status_code"), 200);
    const children = receiver.spans.filter((s) => s.parentSpanId === root!.spanId).map((s) => s.name).sort();
    assertEquals(children, ["denoise", "image.encode", "text_encode", "vae.decode", "validate"]);

    const runs = receiver.spans.filter((s) => s.name === "unet.run");
    assertEquals(runs.length, 4);
    for (const run of runs) {
      assertEquals(run.links?.map((l) => l.spanId), [root.spanId]);
      assertEquals(Number(attr(run, "batch.rows")), 2);
      assertEquals(Number(attr(run, "batch.requests")), 1);
    }
    assertEquals(runs.map((r) => attr(r, "batch.timesteps")).sort(), ["1", "251", "501", "751"]);
    for (const name of ["text_encoder.run", "vae_decoder.run"]) {
      const run = receiver.spans.find((s) => s.name === name);
      assertEquals(run?.links?.[0].spanId, root.spanId, name);
    }
  } finally {
    await main.stop();
    await receiver.close();
  }
});

Deno.test("telemetry: metrics go out over OTLP too (HTTP server duration by route, batched runs), flushed at shutdown", async () => {
  const receiver = startReceiver();
  const main = await spawnMain({
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
    OTEL_SERVICE_NAME: "telemetry-test",
  });
  try {
    const res = await post(`${main.url}/generate`, {
      prompt: "a small red circle on a blue background",
      steps: 3,
    });
    assertEquals(res.status, 200);
    await res.body?.cancel();
  } finally {
    await main.stop(); // SIGTERM: the server drains and its metrics flush
    await receiver.close();
  }
  const duration = receiver.metrics.filter((m) => m.name === "http.server.request.duration");
  const points = duration.flatMap((m) => m.histogram?.dataPoints ?? []);
  const generate = points.filter((p) =>
    p.attributes?.some((a) => a.key === "http.route" && Object.values(a.value)[0] === "/generate")
  );
  assert(generate.length > 0 && Number(generate.at(-1)!.count) === 1, JSON.stringify(points).slice(0, 500));
  assert(
    receiver.metrics.some((m) => m.name === "sd.unet.batch.rows"),
    receiver.metrics.map((m) => m.name).join(),
  );
});
