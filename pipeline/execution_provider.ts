/**
 * Choosing ONNX Runtime's execution provider. An explicit choice must load or start-up fails with
 * the reason and the fix; `auto` tries CUDA, then WebGPU, then the CPU, keeping the first that
 * really runs the model, and says why each one before it was passed over.
 */
export const PROVIDER_CHOICES = ["auto", "cuda", "webgpu", "cpu"] as const;
export type ProviderChoice = typeof PROVIDER_CHOICES[number];
export const AUTO_ORDER = ["cuda", "webgpu", "cpu"] as const;

export interface ProviderSelection {
  provider: string;
  /** Providers tried before it, with the reason each failed. */
  skipped: { provider: string; reason: string }[];
}

/** What an operator does when a provider cannot run the model. */
export const PROVIDER_FIXES: Record<string, string> = {
  cuda:
    "install onnxruntime-node's CUDA 12 provider (ONNXRUNTIME_NODE_INSTALL=cuda12 at install, as the image " +
    "does) with the CUDA 12 and cuDNN 9 runtime, or choose EXECUTION_PROVIDER=webgpu or cpu",
  webgpu:
    "give the process a Vulkan driver and loader (libvulkan1; on NVIDIA, NVIDIA_DRIVER_CAPABILITIES must " +
    "include graphics; without a GPU, Mesa 25's lavapipe), or choose EXECUTION_PROVIDER=cpu",
  cpu: "use a float32 export of the model, or another EXECUTION_PROVIDER",
};

/** `probe(provider)` opens the model with that provider alone and throws if it cannot run it. */
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
  const fix = choice === "auto" ? "" : ` Fix: ${PROVIDER_FIXES[choice]}.`;
  throw new Error(`no execution provider could run the model (${reasons}).${fix}`);
}
