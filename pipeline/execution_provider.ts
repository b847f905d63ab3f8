/**
 * Choosing ONNX Runtime's execution provider. An explicit choice must load or start-up fails with
 * the reason; `auto` tries CUDA, then WebGPU, then the CPU, keeping the first that really creates
 * a session, and says why each one before it was passed over.
 */
export const PROVIDER_CHOICES = ["auto", "cuda", "webgpu", "cpu"] as const;
export type ProviderChoice = typeof PROVIDER_CHOICES[number];
export const AUTO_ORDER = ["cuda", "webgpu", "cpu"] as const;

export interface ProviderSelection {
  provider: string;
  /** Providers tried before it, with the reason each failed. */
  skipped: { provider: string; reason: string }[];
}

/** `probe(provider)` creates a small session with that provider alone and throws if it cannot. */
export async function selectProvider(
  choice: ProviderChoice,
  probe: (provider: string) => Promise<void>,
): Promise<ProviderSelection> {
  const candidates = choice === "auto" ? AUTO_ORDER : [choice];
  const skipped: ProviderSelection["skipped"] = [];
  for (const provider of candidates) {
    try {
      await probe(provider);
      return { provider, skipped };
    } catch (error) {
      skipped.push({
        provider,
        reason: String((error as Error).message ?? error).split("\n")[0].slice(0, 300),
      });
    }
  }
  const reasons = skipped.map((s) => `${s.provider}: ${s.reason}`).join("; ");
  throw new Error(`no execution provider could be loaded (${reasons})`);
}
