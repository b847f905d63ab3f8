import { loadConfig } from "./config.ts";
import { startServer } from "./server.ts";

const server = await startServer(loadConfig()).catch((error) => {
  // One line that says what failed and what to do, not a stack trace.
  console.error(`cannot start: ${(error as Error).message}`);
  Deno.exit(1);
});
let stopping = false;
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  Deno.addSignalListener(signal, async () => {
    if (stopping) return;
    stopping = true;
    console.log(`${signal}: draining`);
    await server.close();
    Deno.exit(0);
  });
}
