/**
 * The GPU benchmark (`deno task bench:gpu`, bench/gpu_bench.ts) end to end at its smallest scale, on
 * the WebGPU provider: lavapipe here and in CI, a GPU where there is one. The mini SD-1.5 models
 * (made by support/make_sd15.ts, cached), the served UNet session and the plain graph at 1 and 2 rows,
 * served /generate with batching on and off, and the PyTorch reference (float32 on the CPU here,
 * through the same report; without CUDA the benchmark's default says why it did not run). Also the sharp stand-in that the device bundle carries when libvips does
 * not fit (bench/gpu/pack.sh), against sharp itself; and that the working tree leaves the bundle room.
 *
 * Ignored, with the reason printed, where WebGPU cannot load or the training tools' Python is missing;
 * under CI=true a WebGPU that cannot load fails instead.
 */
import { deepStrictEqual as assertEquals, ok as assert, rejects, throws } from "node:assert/strict";
import { Buffer } from "node:buffer";
import sharp from "sharp";
import standIn from "../bench/gpu/sharp_standin.mjs";
import { PYTHON, pythonReady } from "../support/python.ts";
import { webgpuUnavailable } from "./helpers.ts";

if (!Deno.env.get("XDG_RUNTIME_DIR")) Deno.env.set("XDG_RUNTIME_DIR", "/tmp");
const ROOT = new URL("../", import.meta.url).pathname;

const unavailable = await webgpuUnavailable();
const inCI = Deno.env.get("CI") === "true";
const reason = unavailable
  ? `the WebGPU provider cannot load here (${unavailable})`
  : !pythonReady
  ? `no Python with torch and onnx at ${PYTHON} to make the models`
  : undefined;
if (reason && !(inCI && unavailable)) console.log(`gpu_bench_test: end-to-end run ignored: ${reason}`);

Deno.test("sharp stand-in: raw RGB to a PNG that sharp decodes to the same pixels", async () => {
  for (const [width, height] of [[64, 64], [7, 3], [300, 230]]) {
    const data = new Uint8Array(width * height * 3).map((_, i) => (i * 7919) % 251);
    const png = await standIn(data, { raw: { width, height, channels: 3 } }).png().toBuffer();
    const back = await sharp(png).raw().toBuffer({ resolveWithObject: true });
    assertEquals([back.info.width, back.info.height, back.info.channels], [width, height, 3]);
    assert(Buffer.from(data).equals(back.data), `${width}x${height}: pixels differ`);
  }
  throws(() => standIn(new Uint8Array(8)), /not available/);
  await rejects(
    standIn(new Uint8Array(12), { raw: { width: 2, height: 2, channels: 3 } }).webp().toBuffer(),
    /not available/,
  );
});

/**
 * What the device call carries besides the working tree (bench/gpu/pack.sh, measured 2026-11-28):
 * Deno 27.5, onnxruntime-node's linux-x64 files 10.9, node_modules 1.8, the Vulkan .debs 0.4 MiB.
 */
const CARRIED_MIB = 40.6;

Deno.test("the working tree leaves room for the GPU benchmark's bundle (64 MiB in all)", async () => {
  const listed = await new Deno.Command("git", {
    args: ["ls-files", "-z", "--cached", "--others", "--exclude-standard"],
    cwd: ROOT,
    stdout: "piped",
  }).output();
  assert(listed.success);
  const files = new TextDecoder().decode(listed.stdout).split("\0").filter(Boolean);
  let bytes = 0;
  for (const file of files) bytes += await Deno.stat(`${ROOT}${file}`).then((s) => s.size, () => 0);
  const mib = bytes / 2 ** 20;
  assert(
    mib + CARRIED_MIB <= 64,
    `the tree is ${mib.toFixed(2)} MiB: with the ${CARRIED_MIB} MiB the device call carries it passes 64 MiB`,
  );
});

Deno.test({
  name: "bench:gpu end to end at the smallest scale (mini models, 64x64, webgpu)",
  ignore: reason !== undefined && !(inCI && unavailable),
  fn: async () => {
    if (unavailable) throw new Error(`CI=true and the WebGPU provider cannot load: ${unavailable}`);
    const out = await Deno.makeTempDir({ prefix: "gpu_bench_test_" });
    const run = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "bench/gpu_bench.ts",
        "--size=mini",
        "--resolution=64",
        "--rows=1,2",
        "--variants=fp16",
        "--levels=1",
        "--steps=2",
        "--runs=2",
        "--warmup=1",
        "--requests-per-client=1",
        "--torch=eager",
        "--torch-device=cpu", // the reference's path through the report: float32 on the CPU here
        "--budget-s=150",
        `--out=${out}`,
      ],
      cwd: ROOT,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(run.stdout) + new TextDecoder().decode(run.stderr);
    assert(run.success, text);
    const results = JSON.parse(await Deno.readTextFile(`${out}/gpu_bench.json`));
    for (const graph of ["lora", "plain"]) {
      for (const rows of [1, 2]) {
        const point = results.unet.find((p: any) => p.graph === graph && p.rows === rows);
        assert(point?.ms_median > 0 && point.finite === true, `${graph} ${rows}: ${JSON.stringify(point)}`);
      }
    }
    assertEquals(results.lora_graphs.fp16.targets, 128);
    const [level] = results.serve.levels;
    assert(level.batched?.imagesPerSecond > 0 && level.unbatched?.imagesPerSecond > 0, JSON.stringify(level));
    assertEquals(level.ceiling.rows, 2);
    assert(results.serve.image_encoder.length > 0);
    const torch = results.torch.points.filter((p: any) => p.type === "result");
    assertEquals(torch.map((p: any) => [p.mode, p.rows]), [["eager", 1], ["eager", 2]]);
    assertEquals(results.cut, []);
    const md = await Deno.readTextFile(`${out}/gpu_bench.md`);
    const header =
      "| rows | fp16 LoRA graph | fp16 plain graph | PyTorch float32 eager (math) | fp16 LoRA / fastest PyTorch |";
    assert(md.includes(header), md);
    assert(/\| 2 \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+x \|/.test(md), md);
    await Deno.remove(out, { recursive: true });
  },
});

Deno.test({
  name: "torch_unet_bench.py runs the UNet forward (CPU, mini) and prints its records",
  ignore: !pythonReady,
  fn: async () => {
    const run = await new Deno.Command(PYTHON, {
      args: [
        "torch_unet_bench.py",
        "--size=mini",
        "--resolution=64",
        "--rows=1,2",
        "--device=cpu",
        "--runs=1",
        "--warmup=1",
        "--modes=eager",
      ],
      cwd: `${ROOT}training`,
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert(run.success, new TextDecoder().decode(run.stderr));
    const records = new TextDecoder().decode(run.stdout).trim().split("\n").map((l) => JSON.parse(l));
    assertEquals(records[0].type, "env");
    const results = records.filter((r) => r.type === "result");
    assertEquals(results.map((r) => r.rows), [1, 2]);
    assert(results.every((r) => r.ms_median > 0 && r.finite));
  },
});
