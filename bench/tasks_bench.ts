/**
 * Downstream-task benchmark, side by side in one run: an 11-frame /interpolate against 11
 * sequential /generate calls of the same work, and /invert by method.
 *
 *   deno task bench:tasks [--steps 50] [--rounds 3]
 */
import { parseArgs } from "node:util";
import { loadConfig } from "../config.ts";
import { startServer } from "../server.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    steps: { type: "string", default: "50" },
    rounds: { type: "string", default: "3" },
    model: { type: "string", default: new URL("../models/tiny-sd-shapes", import.meta.url).pathname },
  },
});
const steps = Number(values.steps), rounds = Number(values.rounds);
const server = await startServer(loadConfig({ PORT: "0", HOST: "127.0.0.1", MODEL: values.model! }), {
  quiet: true,
});
const A = "a large red circle on a blue background", B = "a small white triangle on a green background";

async function timedPost(path: string, body: unknown): Promise<[number, any]> {
  const t0 = performance.now();
  const res = await fetch(`${server.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const json = await res.json();
  if (res.status !== 200) throw new Error(`${path}: ${res.status} ${JSON.stringify(json)}`);
  return [performance.now() - t0, json];
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const interp: number[] = [], sequential: number[] = [];
await timedPost("/generate", { prompt: A, steps: 2 }); // warm-up
for (let r = 0; r < rounds; r++) {
  interp.push(
    (await timedPost("/interpolate", {
      from: { prompt: A, seed: 1 },
      to: { prompt: B, seed: 2 },
      frames: 11,
      steps,
    }))[0],
  );
  let total = 0;
  for (let k = 0; k < 11; k++) {
    total += (await timedPost("/generate", { prompt: k < 6 ? A : B, seed: k, steps }))[0];
  }
  sequential.push(total);
}
const image = (await timedPost("/generate", { prompt: A, seed: 9, steps }))[1].images[0].data;
const invert: Record<string, number[]> = { ddim: [], "fixed-point": [] };
const psnr: Record<string, number> = {};
for (let r = 0; r < rounds; r++) {
  for (const method of ["ddim", "fixed-point"]) {
    const [ms, json] = await timedPost("/invert", { image, prompt: A, steps, method });
    invert[method].push(ms);
    psnr[method] = json.metrics.psnr;
  }
}
await server.close();

console.log(
  `\nDownstream tasks, ${steps} DDIM steps, 64x64, ${navigator.hardwareConcurrency} CPU threads (median of ${rounds})\n`,
);
console.log("| measure | time |\n|---|---|");
console.log(`| /interpolate, 11 frames | ${median(interp).toFixed(0)} ms |`);
console.log(`| 11 sequential /generate | ${median(sequential).toFixed(0)} ms |`);
console.log(`| speed-up of /interpolate | ${(median(sequential) / median(interp)).toFixed(2)}x |`);
for (const method of Object.keys(invert)) {
  console.log(
    `| /invert ${method} (inversion + reconstruction; PSNR ${psnr[method].toFixed(2)} dB) | ${
      median(invert[method]).toFixed(0)
    } ms |`,
  );
}
