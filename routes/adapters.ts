/** Resolves a request's `lora` field through the adapter registry, mapping failures to API errors. */
import type { z } from "zod";
import { ApiError } from "./errors.ts";
import type { Admission } from "./admission.ts";
import type { loraFieldSchema } from "./schemas.ts";
import { type AdapterRegistry, RegistryError, type RegistryErrorCode } from "../loras/registry.ts";
import { AdapterError } from "../loras/adapter.ts";
import type { AppliedAdapter } from "../loras/pack.ts";
import { inSpan, type Span } from "../telemetry.ts";

const STATUS: Record<RegistryErrorCode, 403 | 404 | 413 | 422 | 502 | 504> = {
  adapter_not_allowed: 403,
  adapter_forbidden: 403,
  adapter_not_found: 404,
  adapter_not_cached: 404,
  adapter_too_large: 413,
  adapter_file_ambiguous: 422,
  hub_unavailable: 502,
  hub_timeout: 504,
};

export interface ResolvedAdapters {
  applied: AppliedAdapter[];
  release: () => void;
  /** What the response reports: each adapter with its resolved commit. */
  report: {
    repo: string;
    file: string;
    revision: string;
    commit: string;
    scale: number;
    format: string;
    applied_modules: number;
    not_applied?: string[];
    not_applied_count?: number;
  }[];
}

export async function resolveAdapters(
  registry: AdapterRegistry,
  lora: z.infer<typeof loraFieldSchema>,
  span: Span,
): Promise<ResolvedAdapters> {
  const specs = lora === undefined ? [] : Array.isArray(lora) ? lora : [lora];
  if (specs.length === 0) return { applied: [], release: () => {}, report: [] };
  return await inSpan("adapter.resolve", span, async () => {
    try {
      const { applied, release } = await registry.acquire(specs);
      const report = applied.map(({ adapter, scale }) => ({
        repo: adapter.source.repo,
        file: adapter.source.file,
        revision: adapter.source.revision,
        commit: adapter.source.commit,
        scale,
        format: adapter.format,
        applied_modules: adapter.modules.size,
        // Keys that are not UNet attention LoRA weights (text encoder, other layers): reported, not applied.
        ...(adapter.ignored.length
          ? { not_applied: adapter.ignored.slice(0, 20), not_applied_count: adapter.ignored.length }
          : {}),
      }));
      return { applied, release, report };
    } catch (error) {
      if (error instanceof RegistryError) {
        throw new ApiError(STATUS[error.code], error.code, error.message, "lora");
      }
      if (error instanceof AdapterError) throw new ApiError(422, error.code, error.message, "lora");
      throw error;
    }
  }, { adapters: specs.length });
}

/**
 * Admits a request (429 when full), then runs `prepare`, the request's own costly checks (decoding
 * its images), so that they count against the concurrency limit, then resolves its adapters;
 * `release` frees both. Every task route starts this way, so a slot is never held by a request
 * whose adapters failed.
 */
export async function startTask<P = undefined>(
  admission: Admission,
  registry: AdapterRegistry,
  lora: z.infer<typeof loraFieldSchema>,
  span: Span,
  prepare?: () => Promise<P>,
): Promise<{ adapters: ResolvedAdapters; release: () => void; prepared: P }> {
  const leave = admission.acquire();
  try {
    const prepared = prepare ? await prepare() : undefined as P;
    const adapters = await resolveAdapters(registry, lora, span);
    return {
      adapters,
      release: () => {
        adapters.release();
        leave();
      },
      prepared,
    };
  } catch (error) {
    leave();
    throw error;
  }
}
