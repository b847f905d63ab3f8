/** Builds the running server from a configuration: the model's engine (a worker), the app, the HTTP listener, telemetry. */
import { createApp } from "./routes/app.ts";
import { EngineClient } from "./engine/client.ts";
import { setupTelemetry } from "./telemetry.ts";
import type { Config } from "./config.ts";

export interface RunningServer {
  url: string;
  engine: EngineClient;
  close(): Promise<void>;
}

export async function startServer(config: Config, options: { quiet?: boolean } = {}): Promise<RunningServer> {
  const stopTelemetry = setupTelemetry(config.telemetry);
  const engine = await EngineClient.start(config, { faultInjection: config.engineFaultInjection });
  let draining = false;
  const { app, requests, close: closeApp } = createApp({ engine, config, draining: () => draining });
  const server = Deno.serve({
    port: config.port,
    hostname: config.host,
    onListen: ({ hostname, port }) => {
      if (!options.quiet) console.log(`serving ${engine.info.name} on http://${hostname}:${port}`);
    },
  }, app.fetch);
  const { hostname, port } = server.addr as Deno.NetAddr;
  return {
    url: `http://${hostname === "0.0.0.0" ? "127.0.0.1" : hostname}:${port}`,
    engine,
    /**
     * Graceful stop: readiness turns 503 and new work is refused with 503 for the drain delay (so
     * load balancers move away), then the listener closes and in-flight requests finish, up to
     * the shutdown deadline. Past it, their work is stopped (they get 503) and the engine is
     * closed once it has ended: a batched run in progress finishes first.
     */
    async close() {
      draining = true;
      await new Promise((r) => setTimeout(r, config.shutdown.drainDelayMs));
      if (!await within(server.shutdown(), config.shutdown.timeoutMs)) {
        requests.stopAll();
        if (!await within(requests.ended(), config.shutdown.timeoutMs)) {
          console.error(`shutdown: ${requests.size} requests still running; stopping the engine anyway`);
        }
      }
      await closeApp();
      await engine.close();
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
