/** Builds the running server from a configuration: model, app, HTTP listener, telemetry. */
import { createApp } from "./routes/app.ts";
import { DiffusionModel } from "./pipeline/model.ts";
import { resolveModel } from "./pipeline/model_source.ts";
import { setupTelemetry } from "./telemetry.ts";
import { AdapterRegistry } from "./loras/registry.ts";
import type { Config } from "./config.ts";

export interface RunningServer {
  url: string;
  model: DiffusionModel;
  adapters: AdapterRegistry;
  close(): Promise<void>;
}

/** The configured model, loaded, and the adapter registry for its LoRA targets (server and tools). */
export async function loadServing(config: Config) {
  const location = await resolveModel(config.model, config.hub);
  const model = await DiffusionModel.load(location.directory, location.name, {
    batch: config.batch,
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

export async function startServer(config: Config, options: { quiet?: boolean } = {}): Promise<RunningServer> {
  const stopTelemetry = setupTelemetry(config.telemetry);
  const { location, model, adapters } = await loadServing(config);
  let draining = false;
  const { app, requests, close: closeApp } = createApp({ model, adapters, config, ready: () => !draining });
  const server = Deno.serve({
    port: config.port,
    hostname: config.host,
    onListen: ({ hostname, port }) => {
      if (!options.quiet) console.log(`serving ${location.name} on http://${hostname}:${port}`);
    },
  }, app.fetch);
  const { hostname, port } = server.addr as Deno.NetAddr;
  return {
    url: `http://${hostname === "0.0.0.0" ? "127.0.0.1" : hostname}:${port}`,
    model,
    adapters,
    /**
     * Graceful stop: readiness turns 503 and new work is refused with 503 for the drain delay (so
     * load balancers move away), then the listener closes and in-flight requests finish, up to
     * the shutdown deadline. Past it, their work is stopped (they get 503) and the model is
     * released once it has ended: a batched run in progress finishes first.
     */
    async close() {
      draining = true;
      await new Promise((r) => setTimeout(r, config.shutdown.drainDelayMs));
      if (!await within(server.shutdown(), config.shutdown.timeoutMs)) {
        requests.stopAll();
        if (!await within(requests.ended(), config.shutdown.timeoutMs)) {
          console.error(`shutdown: ${requests.size} requests still running; releasing the model anyway`);
        }
      }
      await closeApp();
      await model.release();
      await stopTelemetry();
    },
  };
}

/** Whether `promise` settled within `ms`. */
async function within(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<false>((resolve) => timer = setTimeout(() => resolve(false), ms));
  try {
    return await Promise.race([promise.then(() => true), late]);
  } finally {
    clearTimeout(timer);
  }
}
