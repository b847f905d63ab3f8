/**
 * The server's metrics through OpenTelemetry's metrics SDK: `/metrics` in Prometheus's text format
 * (the Prometheus exporter, its own server not started), and OTLP/HTTP export as well when
 * `OTEL_EXPORTER_OTLP_ENDPOINT` is set. HTTP requests follow the semantic conventions for HTTP
 * servers (`http.server.request.duration`, with `http.request.method`, `http.route` and
 * `http.response.status_code`); the model's own measurements are `sd.*`.
 */
import type { Attributes } from "@opentelemetry/api";
import { MeterProvider, type MetricReader, PeriodicExportingMetricReader } from "@opentelemetry/sdk-metrics";
import { PrometheusExporter, PrometheusSerializer } from "@opentelemetry/exporter-prometheus";
import { OTLPMetricExporter } from "@opentelemetry/exporter-metrics-otlp-http";
import { resourceFromAttributes } from "@opentelemetry/resources";
import type { TelemetryConfig } from "./telemetry.ts";

/** What the server's gauges and counters read when they are collected. */
export interface MetricSources {
  requestsInFlight: () => number;
  queueDepth: () => number;
  adapters: () => { hits: number; misses: number; downloads: number; bytes: number };
}

/** How often metrics go out over OTLP (when an endpoint is set). */
const OTLP_INTERVAL_MS = 10_000;

export class ServerMetrics {
  readonly #provider: MeterProvider;
  readonly #prometheus = new PrometheusExporter({ preventServerStart: true });
  readonly #serializer = new PrometheusSerializer();
  readonly #requestDuration;
  readonly #batchRows;
  readonly #runDuration;

  constructor(telemetry: TelemetryConfig, sources: MetricSources) {
    const readers: MetricReader[] = [this.#prometheus];
    if (telemetry.otlpEndpoint) {
      readers.push(
        new PeriodicExportingMetricReader({
          exporter: new OTLPMetricExporter({
            url: `${telemetry.otlpEndpoint.replace(/\/$/, "")}/v1/metrics`,
          }),
          exportIntervalMillis: OTLP_INTERVAL_MS,
        }),
      );
    }
    this.#provider = new MeterProvider({
      resource: resourceFromAttributes({ "service.name": telemetry.serviceName }),
      readers,
    });
    const meter = this.#provider.getMeter("smooth-diffusion-server", "0.1.0");
    this.#requestDuration = meter.createHistogram("http.server.request.duration", {
      unit: "s",
      description: "Duration of HTTP server requests",
      advice: { explicitBucketBoundaries: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60] },
    });
    this.#batchRows = meter.createHistogram("sd.unet.batch.rows", {
      unit: "{row}",
      description: "Rows per batched UNet run",
      advice: { explicitBucketBoundaries: [1, 2, 4, 8, 16, 32, 64, 128, 256] },
    });
    this.#runDuration = meter.createHistogram("sd.unet.run.duration", {
      unit: "s",
      description: "Duration of one batched UNet run",
      advice: {
        explicitBucketBoundaries: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      },
    });
    meter.createObservableGauge("sd.requests.in_flight", {
      description: "Requests admitted and not yet finished",
    })
      .addCallback((r) => r.observe(sources.requestsInFlight()));
    meter.createObservableGauge("sd.queue.depth", {
      description: "UNet calls waiting for the next batched run",
    })
      .addCallback((r) => r.observe(sources.queueDepth()));
    const adapterCounter = (name: string, description: string, read: () => number) =>
      meter.createObservableCounter(name, { description }).addCallback((r) => r.observe(read()));
    adapterCounter(
      "sd.adapter.cache.hits",
      "Adapter requests served from memory",
      () => sources.adapters().hits,
    );
    adapterCounter(
      "sd.adapter.cache.misses",
      "Adapter requests that loaded from disk or the hub",
      () => sources.adapters().misses,
    );
    adapterCounter(
      "sd.adapter.downloads",
      "Adapter files downloaded from the hub",
      () => sources.adapters().downloads,
    );
    meter.createObservableGauge("sd.adapter.cache.size", {
      unit: "By",
      description: "Bytes of parsed adapters in memory",
    })
      .addCallback((r) => r.observe(sources.adapters().bytes));
    // process.memory.usage and v8js.memory.heap.used as OpenTelemetry's runtime conventions name them
    meter.createObservableGauge("process.memory.usage", {
      unit: "By",
      description: "Resident memory of the process",
    })
      .addCallback((r) => r.observe(Deno.memoryUsage().rss));
    meter.createObservableGauge("v8js.memory.heap.used", {
      unit: "By",
      description: "JavaScript heap in use",
    })
      .addCallback((r) => r.observe(Deno.memoryUsage().heapUsed));
  }

  /** One HTTP request: `route` and `method` from fixed sets (a client never creates a series). */
  recordRequest(route: string, method: string, status: number, seconds: number): void {
    const attributes: Attributes = {
      "http.request.method": method,
      "http.route": route,
      "http.response.status_code": status,
    };
    this.#requestDuration.record(seconds, attributes);
  }

  /** One batched UNet run. */
  recordRun(rows: number, seconds: number): void {
    this.#batchRows.record(rows);
    this.#runDuration.record(seconds);
  }

  /** The Prometheus text exposition of every metric now. */
  async prometheusText(): Promise<string> {
    const { resourceMetrics } = await this.#prometheus.collect();
    return this.#serializer.serialize(resourceMetrics);
  }

  /** Exports what is left (OTLP) and stops. */
  shutdown(): Promise<void> {
    return this.#provider.shutdown();
  }
}
