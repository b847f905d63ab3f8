/** The configured model, loaded, and the adapter registry for its LoRA targets (engine and tools). */
import { DiffusionModel } from "../pipeline/model.ts";
import { resolveModel } from "../pipeline/model_source.ts";
import { AdapterRegistry } from "../loras/registry.ts";
import type { Config } from "../config.ts";
import type { BatchOptions } from "../pipeline/batcher.ts";

/** `nextTurn`: how the batchers start back-to-back runs (see pipeline/batcher.ts). */
export async function loadServing(config: Config, options: Pick<BatchOptions, "nextTurn"> = {}) {
  const location = await resolveModel(config.model, config.hub);
  const model = await DiffusionModel.load(location.directory, location.name, {
    batch: { ...config.batch, ...options },
    memoryBudgetBytes: config.memoryBudgetBytes,
    executionProvider: config.executionProvider,
    cacheDir: config.cacheDir,
  });
  const adapters = new AdapterRegistry(new Map(model.loraTargets.map((t) => [t.module, t])), {
    ...config.hub,
    ...config.adapters,
    maxAdapterBytes: config.adapters.maxBytes,
  });
  return { location, model, adapters };
}
