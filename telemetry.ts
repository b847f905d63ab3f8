/**
 * Tracing. Spans are made with @opentelemetry/api; when an OTLP endpoint is configured a tracer
 * provider exports them over OTLP/HTTP (JSON). Without one every span is a no-op.
 * Parents are passed explicitly (no async context manager is registered): a request's span
 * travels with its work, and batched model runs, which serve many requests, link to them instead.
 */
import { context, type Link, type Span, type SpanContext, SpanStatusCode, trace } from "@opentelemetry/api";
import { BatchSpanProcessor, TracerProvider } from "@opentelemetry/sdk-trace";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";

export type { Span, SpanContext };

export const tracer = trace.getTracer("smooth-diffusion-server", "0.1.0");

export interface TelemetryConfig {
  otlpEndpoint?: string;
  serviceName: string;
}

/** Registers the exporting provider; returns a function that flushes and stops it. */
export function setupTelemetry(config: TelemetryConfig): () => Promise<void> {
  if (!config.otlpEndpoint) return () => Promise.resolve();
  const exporter = new OTLPTraceExporter({ url: `${config.otlpEndpoint.replace(/\/$/, "")}/v1/traces` });
  const provider = new TracerProvider({
    resource: resourceFromAttributes({ "service.name": config.serviceName }),
    spanProcessors: [new BatchSpanProcessor({ exporter, scheduledDelayMillis: 200 })],
  });
  trace.setGlobalTracerProvider(provider);
  return () => provider.shutdown();
}

export function startSpan(
  name: string,
  parent?: Span,
  attributes?: Record<string, string | number | boolean>,
  links?: Link[],
): Span {
  const ctx = parent ? trace.setSpan(context.active(), parent) : context.active();
  return tracer.startSpan(name, { attributes, links }, ctx);
}

/** Runs `fn` inside a child span of `parent`, recording failure and always ending the span. */
export async function inSpan<T>(
  name: string,
  parent: Span | undefined,
  fn: (span: Span) => Promise<T> | T,
  attributes?: Record<string, string | number | boolean>,
): Promise<T> {
  const span = startSpan(name, parent, attributes);
  try {
    return await fn(span);
  } catch (error) {
    span.setStatus({ code: SpanStatusCode.ERROR, message: String(error) });
    throw error;
  } finally {
    span.end();
  }
}
