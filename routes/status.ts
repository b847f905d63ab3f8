/** The server's state for probes and clients: /health (liveness and readiness) and /v1/models. */
import type { Admission } from "./admission.ts";
import type { Handler } from "./route.ts";
import type { EngineClient } from "../engine/client.ts";
import type { Config } from "../config.ts";

/** Ready: not draining, and the engine is running (false while its worker restarts). */
export function health(engine: EngineClient, admission: Admission, draining: () => boolean): Handler {
  return (c) => {
    const drains = draining(), ready = !drains && engine.ready;
    return c.json(
      {
        status: ready ? "ok" : drains ? "draining" : "engine_starting",
        live: true,
        ready,
        in_flight: admission.active,
        engine_restarts: engine.restarts,
      },
      ready ? 200 : 503,
    );
  };
}

export const liveness: Handler = (c) => c.json({ status: "ok", live: true });

/** The served model: its size, precision, memory budget, provider, capabilities and adapters. */
export function models(engine: EngineClient, config: Config): Handler {
  return (c) => {
    const { model, memory } = engine.info;
    return c.json({
      data: [{
        id: engine.info.name,
        object: "model",
        native_width: model.nativeWidth,
        native_height: model.nativeHeight,
        latent_channels: model.latentChannels,
        precision: model.precision,
        memory: {
          budget_bytes: memory.budgetBytes,
          enforced: memory.costs !== undefined,
          run_cost: memory.costs,
        },
        execution_provider: engine.info.provider.provider,
        execution_provider_choice: config.executionProvider,
        execution_providers_skipped: engine.info.provider.skipped,
        capabilities: {
          generate: true,
          invert: model.canEncodeImages,
          edit: model.canEncodeImages,
          interpolate: true,
          image_input: model.canEncodeImages,
          per_row_timestep: model.perRowTimestep,
          schedulers: ["ddim", "euler"],
        },
        lora_targets: engine.info.loraTargets,
        adapters: engine.state.loadedAdapters,
      }],
    });
  };
}
