/**
 * ONNX Runtime's WebGPU provider, end to end: `main.ts` in a child process with
 * `EXECUTION_PROVIDER=webgpu` against the same server on the CPU provider, over loopback. With no
 * GPU it runs on Mesa's software Vulkan (lavapipe, Mesa 25 from bookworm-backports: `.ci/run`
 * installs it), so this is the GPU code path's correctness check, not a speed check (a tiny UNet run
 * takes ~157 ms there against ~4 ms on the CPU provider): few steps.
 *
 * Where WebGPU cannot load these tests are ignored with the reason printed; under `CI=true` they
 * run and fail with it instead, so CI cannot skip them silently.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { metricValue, pixels, post, spawnMain, webgpuUnavailable } from "./helpers.ts";
import { maxAbsDifference } from "../support/parity.ts";
import { decodeLatent } from "../pipeline/latent_codec.ts";

// Dawn wants a runtime directory (it complains without one); the child servers inherit it.
if (!Deno.env.get("XDG_RUNTIME_DIR")) Deno.env.set("XDG_RUNTIME_DIR", "/tmp");

const unavailable = await webgpuUnavailable();
const inCI = Deno.env.get("CI") === "true";
if (unavailable && !inCI) {
  console.log(
    `webgpu_test: ignored, the WebGPU provider cannot load here (${unavailable}). It needs a Vulkan ` +
      "driver Dawn accepts, e.g. Mesa 25 from bookworm-backports as .ci/run installs it; under CI=true this fails.",
  );
}

function webgpuTest(name: string, fn: () => Promise<void>) {
  Deno.test({
    name,
    ignore: unavailable !== undefined && !inCI,
    fn: async () => {
      if (unavailable) throw new Error(`CI=true and the WebGPU provider cannot load: ${unavailable}`);
      await fn();
    },
  });
}

const PROMPT = "a large red circle on a blue background";
const STEPS = 6;
const SMOOTH = "smooth-diffusion/tiny-sd-shapes-smooth-lora";
/** The shipped adapters from models/hub-cache only: port 9 on loopback refuses any hub call. */
const OFFLINE = { HF_ENDPOINT: "http://127.0.0.1:9", HF_HUB_OFFLINE: "1" };

/*
 * Tolerances. Largest differences measured on lavapipe (2 AMD EPYC cores, Mesa 25.0.7,
 * onnxruntime-node 1.30, 6 DDIM steps at guidance 7.5; the same on every run): decoded pixels 1
 * level of 255 for /generate, 1, 1 and 0 for the mixed-adapter batch's three images, 1 for
 * /invert's reconstruction; /invert's latent x_T 1.6e-5. The bounds leave room for other drivers'
 * rounding and still catch a wrong kernel, which moves pixels by tens of levels.
 */
const PIXEL_TOLERANCE = 3;
const LATENT_TOLERANCE = 1e-3;

interface Outcome {
  provider: string;
  generated: string;
  generatedPixels: Uint8Array;
  mixed: Uint8Array[];
  mixedRuns: number;
  latent: Float32Array;
  reconstruction: Uint8Array;
}

function unetRuns(url: string): Promise<number> {
  return metricValue(url, "sd_unet_batch_rows_count");
}

async function generate(url: string, lora?: unknown, steps = STEPS) {
  const res = await post(`${url}/generate`, { prompt: PROMPT, seed: 7, steps, ...(lora ? { lora } : {}) });
  const json = await res.json();
  assertEquals(res.status, 200, JSON.stringify(json));
  return json.images[0].data as string;
}

/** The same requests on one server; `image` (base64) is the input to /invert. */
async function scenario(env: Record<string, string>, image?: string): Promise<Outcome> {
  const server = await spawnMain({ ...OFFLINE, ...env });
  try {
    const { url } = server;
    const provider = (await (await fetch(`${url}/v1/models`)).json()).data[0].execution_provider;
    const generated = await generate(url);
    // Warm the adapter (parsed once from the bundled Hub cache) so the three requests start together.
    await generate(url, { repo: SMOOTH }, 1);
    const before = await unetRuns(url);
    const mixed = await Promise.all(
      [undefined, { repo: SMOOTH, scale: 1 }, { repo: SMOOTH, scale: 0.5 }].map((lora) =>
        generate(url, lora)
      ),
    );
    const mixedRuns = await unetRuns(url) - before;
    const res = await post(`${url}/invert`, { image: image ?? generated, prompt: PROMPT, steps: STEPS });
    const inverted = await res.json();
    assertEquals(res.status, 200, JSON.stringify(inverted));
    return {
      provider,
      generated,
      generatedPixels: await pixels(generated),
      mixed: await Promise.all(mixed.map(pixels)),
      mixedRuns,
      latent: decodeLatent(inverted.latent),
      reconstruction: await pixels(inverted.reconstruction.data),
    };
  } finally {
    await server.stop();
  }
}

webgpuTest("webgpu: /generate, a mixed-adapter batch and /invert agree with the CPU provider", async () => {
  const cpu = await scenario({ EXECUTION_PROVIDER: "cpu" });
  const gpu = await scenario({ EXECUTION_PROVIDER: "webgpu" }, cpu.generated);
  assertEquals([cpu.provider, gpu.provider], ["cpu", "webgpu"]);
  // The three requests (no adapter, Smooth-LoRA at 1 and at 0.5) shared UNet runs on WebGPU too:
  // 6 runs for 3 x 6 steps as measured; apart they take 18, two of them together at least 12.
  assert(gpu.mixedRuns < 2 * STEPS, `the mixed-adapter batch took ${gpu.mixedRuns} UNet runs`);
  const differences = {
    generate: maxAbsDifference(gpu.generatedPixels, cpu.generatedPixels),
    mixed: cpu.mixed.map((image, i) => maxAbsDifference(gpu.mixed[i], image)),
    invert_latent: maxAbsDifference(gpu.latent, cpu.latent),
    invert_reconstruction: maxAbsDifference(gpu.reconstruction, cpu.reconstruction),
  };
  console.log(`webgpu vs cpu, max |difference| (pixels in levels of 255): ${JSON.stringify(differences)}`);
  assert(differences.generate <= PIXEL_TOLERANCE, `/generate: ${differences.generate}`);
  for (const d of differences.mixed) {
    assert(d <= PIXEL_TOLERANCE, `mixed-adapter batch: ${differences.mixed}`);
  }
  assert(differences.invert_latent <= LATENT_TOLERANCE, `/invert latent: ${differences.invert_latent}`);
  assert(
    differences.invert_reconstruction <= PIXEL_TOLERANCE,
    `/invert reconstruction: ${differences.invert_reconstruction}`,
  );
  // The adapter changes the image on WebGPU as on the CPU, so the rows did not all get one adapter.
  assert(maxAbsDifference(gpu.mixed[0], gpu.mixed[1]) > 10 * PIXEL_TOLERANCE, "the adapter changed nothing");
});

webgpuTest(
  "webgpu: auto chooses WebGPU where it loads and its start log says why CUDA was skipped",
  async () => {
    // onnxruntime-node installs here without its CUDA provider download, so CUDA cannot load.
    const server = await spawnMain({ EXECUTION_PROVIDER: "auto" }, { stderr: true });
    try {
      const model = (await (await fetch(`${server.url}/v1/models`)).json()).data[0];
      assertEquals([model.execution_provider, model.execution_provider_choice], ["webgpu", "auto"]);
      assertEquals(model.execution_providers_skipped.map((s: { provider: string }) => s.provider), ["cuda"]);
      const reason: string = model.execution_providers_skipped[0].reason;
      assert(reason.length > 0);
      const line = server.stderr().split("\n").find((l) =>
        l.startsWith("execution provider cuda unavailable:")
      );
      assertEquals(line, `execution provider cuda unavailable: ${reason}`, server.stderr());
    } finally {
      await server.stop();
    }
  },
);
