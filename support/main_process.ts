/** The server as it is deployed: `main.ts` in a child process, for tests and benchmarks. */

export interface MainProcess {
  url: string;
  child: Deno.ChildProcess;
  /** SIGTERM (a graceful shutdown), then waits for the exit. */
  stop: () => Promise<void>;
  /** What the child wrote to standard error so far (with `stderr: true`). */
  stderr: () => string;
}

/**
 * `main.ts` in a child process, as `deno task start` runs it, configured by `env` over this
 * process's environment (on a loopback port of its choosing); resolves once it prints its URL.
 * With `stderr: true` its standard error (where start-up warnings go) is kept: `stderr()` returns
 * what has come so far.
 */
export async function spawnMain(
  env: Record<string, string>,
  options: { stderr?: boolean } = {},
): Promise<MainProcess> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--unstable-no-legacy-abort", new URL("../main.ts", import.meta.url).pathname],
    env: { PORT: "0", HOST: "127.0.0.1", ...env },
    stdout: "piped",
    stderr: options.stderr ? "piped" : "null",
  }).spawn();
  let errors = "";
  const drained = options.stderr
    ? child.stderr.pipeThrough(new TextDecoderStream()).pipeTo(
      new WritableStream({ write: (chunk) => void (errors += chunk) }),
    ).catch(() => {})
    : Promise.resolve();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let banner = "";
  while (!/http:\/\/\S+:\d+/.test(banner)) {
    const { value, done } = await lines.read();
    if (done) {
      await drained;
      throw new Error(`main.ts exited before serving: ${banner}${errors ? `\n${errors}` : ""}`);
    }
    banner += value;
  }
  void lines.cancel().catch(() => {});
  const stop = async () => {
    try {
      child.kill("SIGTERM");
    } catch { /* already gone */ }
    await child.status;
    await drained;
  };
  return { url: banner.match(/http:\/\/\S+:\d+/)![0], child, stop, stderr: () => errors };
}
