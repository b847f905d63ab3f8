/**
 * The AUTOMATIC1111 API (/sdapi/v1/...), with requests shaped as its clients send them: every field
 * of A1111's StableDiffusionTxt2ImgProcessingAPI / StableDiffusionImg2ImgProcessingAPI (v1.10,
 * stable-diffusion-webui:modules/api/models.py) at its default, as Open WebUI and SillyTavern send
 * them, against a real server over loopback.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { pixels, post, withServer } from "./helpers.ts";

const PROMPT = "a large red circle on a blue background";
const SMOOTH = "smooth-diffusion/tiny-sd-shapes-smooth-lora";

/**
 * The fields StableDiffusionTxt2ImgProcessingAPI and StableDiffusionImg2ImgProcessingAPI share (both
 * derive from the same processing class), each at its default (pydantic's None is null).
 */
const SHARED_DEFAULTS = {
  prompt: "",
  negative_prompt: "",
  styles: null,
  seed: -1,
  subseed: -1,
  subseed_strength: 0,
  seed_resize_from_h: -1,
  seed_resize_from_w: -1,
  sampler_name: null,
  scheduler: null,
  batch_size: 1,
  n_iter: 1,
  steps: 50,
  cfg_scale: 7.0,
  width: 512,
  height: 512,
  restore_faces: null,
  tiling: null,
  do_not_save_samples: false,
  do_not_save_grid: false,
  eta: null,
  s_min_uncond: null,
  s_churn: null,
  s_tmax: null,
  s_tmin: null,
  s_noise: null,
  override_settings: null,
  override_settings_restore_afterwards: true,
  refiner_checkpoint: null,
  refiner_switch_at: null,
  disable_extra_networks: false,
  firstpass_image: null,
  comments: null,
  force_task_id: null,
  sampler_index: "Euler",
  script_name: null,
  script_args: [],
  send_images: true,
  save_images: false,
  alwayson_scripts: {},
  infotext: null,
};

/** StableDiffusionTxt2ImgProcessingAPI with every field at its default. */
const TXT2IMG_DEFAULTS = {
  ...SHARED_DEFAULTS,
  denoising_strength: null,
  enable_hr: false,
  firstphase_width: 0,
  firstphase_height: 0,
  hr_scale: 2.0,
  hr_upscaler: null,
  hr_second_pass_steps: 0,
  hr_resize_x: 0,
  hr_resize_y: 0,
  hr_checkpoint_name: null,
  hr_sampler_name: null,
  hr_scheduler: null,
  hr_prompt: "",
  hr_negative_prompt: "",
};

/** StableDiffusionImg2ImgProcessingAPI with every field at its default. */
const IMG2IMG_DEFAULTS = {
  ...SHARED_DEFAULTS,
  denoising_strength: 0.75,
  init_images: null,
  resize_mode: 0,
  image_cfg_scale: null,
  mask: null,
  mask_blur_x: 4,
  mask_blur_y: 4,
  mask_blur: null,
  mask_round: true,
  inpainting_fill: 0,
  inpaint_full_res: true,
  inpaint_full_res_padding: 0,
  inpainting_mask_invert: 0,
  initial_noise_multiplier: null,
  latent_mask: null,
  include_init_images: false,
};

/** The client's own choices over the defaults: the tiny model's 64 x 64 and few steps, to be quick. */
const txt2img = (fields: Record<string, unknown>) => ({
  ...TXT2IMG_DEFAULTS,
  prompt: PROMPT,
  width: 64,
  height: 64,
  steps: 8,
  ...fields,
});

/** A1111's error shape ({"error", "detail", "body", "errors"}), the detail naming the field. */
async function assertRefused(response: Response, status: number, field: string) {
  const body = await response.json();
  assertEquals(response.status, status, JSON.stringify(body));
  assertEquals(Object.keys(body).sort(), ["body", "detail", "error", "errors"]);
  assert(body.detail.startsWith(`${field}: `), `${field}: ${body.detail}`);
}

async function samePixels(a: string, b: string): Promise<boolean> {
  const [x, y] = [await pixels(a), await pixels(b)];
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

Deno.test("A1111 txt2img: a full default payload gives /generate's image for the same seed and settings; parameters echo every field, info as A1111 writes it", async () => {
  await withServer({}, async ({ url }) => {
    const res = await post(`${url}/sdapi/v1/txt2img`, txt2img({ seed: 7, negative_prompt: "green" }));
    const a1111 = await res.json();
    assertEquals(res.status, 200, JSON.stringify(a1111));
    assertEquals(Object.keys(a1111).sort(), ["images", "info", "parameters"]);
    assertEquals(a1111.images.length, 1);
    // sampler_name null: A1111 takes sampler_index, "Euler"; cfg_scale 7
    const native = await (await post(`${url}/generate`, {
      prompt: PROMPT,
      negative_prompt: "green",
      width: 64,
      height: 64,
      steps: 8,
      seed: 7,
      guidance_scale: 7,
      scheduler: "euler",
    })).json();
    assert(await samePixels(a1111.images[0], native.images[0].data));
    assertEquals(Object.keys(a1111.parameters).sort(), Object.keys(TXT2IMG_DEFAULTS).sort());
    assertEquals(a1111.parameters.seed, 7);
    const info = JSON.parse(a1111.info);
    assertEquals(
      [info.seed, info.all_seeds, info.all_prompts, info.sampler_name, info.cfg_scale, info.steps],
      [7, [7], [PROMPT], "Euler", 7, 8],
    );
    assertEquals([info.negative_prompt, info.index_of_first_image, info.sd_model_name], [
      "green",
      0,
      "tiny-sd-shapes",
    ]);
    assertEquals(
      info.infotexts[0],
      `${PROMPT}\nNegative prompt: green\nSteps: 8, Sampler: Euler, CFG scale: 7, Seed: 7, Size: 64x64, Model: tiny-sd-shapes`,
    );

    // Open WebUI's payload: a few fields, no seed (random, returned in info), DDIM, Automatic
    const webui = await post(`${url}/sdapi/v1/txt2img`, {
      prompt: PROMPT,
      batch_size: 1,
      width: 64,
      height: 64,
      steps: 8,
      negative_prompt: "",
      cfg_scale: 7.5,
      sampler_name: "DDIM",
      scheduler: "Automatic",
    });
    const random = await webui.json();
    assertEquals(webui.status, 200, JSON.stringify(random));
    const seed = JSON.parse(random.info).seed;
    assert(Number.isInteger(seed) && seed >= 0);
    const again =
      await (await post(`${url}/generate`, { prompt: PROMPT, width: 64, height: 64, steps: 8, seed }))
        .json();
    assert(await samePixels(random.images[0], again.images[0].data), "DDIM, cfg 7.5 is /generate's default");
  });
});

Deno.test("A1111 batch_size 2 x n_iter 2: four images, consecutive seeds in info, one /generate run of num_images 4", async () => {
  await withServer({}, async ({ url }) => {
    const res = await post(`${url}/sdapi/v1/txt2img`, txt2img({ seed: 11, batch_size: 2, n_iter: 2 }));
    const a1111 = await res.json();
    assertEquals(res.status, 200, JSON.stringify(a1111));
    assertEquals(a1111.images.length, 4);
    const info = JSON.parse(a1111.info);
    assertEquals([info.seed, info.all_seeds, info.batch_size], [11, [11, 12, 13, 14], 2]);
    assertEquals(info.all_prompts.length, 4);
    assertEquals(info.infotexts.map((t: string) => /Seed: (\d+)/.exec(t)![1]), ["11", "12", "13", "14"]);
    const native = await (await post(`${url}/generate`, {
      prompt: PROMPT,
      width: 64,
      height: 64,
      steps: 8,
      seed: 11,
      guidance_scale: 7,
      scheduler: "euler",
      num_images: 4,
    })).json();
    for (let i = 0; i < 4; i++) {
      assert(await samePixels(a1111.images[i], native.images[i].data), `image ${i}`);
    }
    // past MAX_IMAGES (8) in all: refused naming n_iter
    await assertRefused(
      await post(`${url}/sdapi/v1/txt2img`, txt2img({ batch_size: 3, n_iter: 3 })),
      400,
      "n_iter",
    );
    await assertRefused(await post(`${url}/sdapi/v1/txt2img`, txt2img({ batch_size: 9 })), 400, "batch_size");
  });
});

Deno.test("A1111 img2img: a full default payload with init_images and denoising_strength is /generate's img2img", async () => {
  await withServer({}, async ({ url }) => {
    const source = (await (await post(`${url}/generate`, {
      prompt: "a small green square on a yellow background",
      seed: 3,
      steps: 8,
    })).json()).images[0].data;
    const body = {
      ...IMG2IMG_DEFAULTS,
      prompt: PROMPT,
      init_images: [`data:image/png;base64,${source}`],
      denoising_strength: 0.5,
      width: 64,
      height: 64,
      steps: 10,
      seed: 5,
      sampler_name: "DDIM",
    };
    const res = await post(`${url}/sdapi/v1/img2img`, body);
    const a1111 = await res.json();
    assertEquals(res.status, 200, JSON.stringify(a1111));
    const native = await (await post(`${url}/generate`, {
      prompt: PROMPT,
      image: source,
      strength: 0.5,
      fit: "fill", // resize_mode 0, "just resize"
      steps: 10,
      seed: 5,
      guidance_scale: 7,
    })).json();
    assert(await samePixels(a1111.images[0], native.images[0].data));
    const info = JSON.parse(a1111.info);
    assertEquals([info.denoising_strength, info.seed], [0.5, 5]);
    assert(info.infotexts[0].includes("Denoising strength: 0.5"), info.infotexts[0]);
    // as A1111: the init images are echoed only with include_init_images
    assertEquals([a1111.parameters.init_images, a1111.parameters.denoising_strength], [null, 0.5]);
    const echoed =
      await (await post(`${url}/sdapi/v1/img2img`, { ...body, steps: 2, include_init_images: true }))
        .json();
    assertEquals(echoed.parameters.init_images, body.init_images);

    await assertRefused(
      await post(`${url}/sdapi/v1/img2img`, { ...body, init_images: null }),
      400,
      "init_images",
    );
    await assertRefused(
      await post(`${url}/sdapi/v1/img2img`, { ...body, init_images: ["not an image"] }),
      400,
      "init_images",
    );
    await assertRefused(
      await post(`${url}/sdapi/v1/img2img`, { ...body, denoising_strength: 1.5 }),
      400,
      "denoising_strength",
    );
    await assertRefused(await post(`${url}/sdapi/v1/img2img`, { ...body, mask: source }), 400, "mask");
    await assertRefused(
      await post(`${url}/sdapi/v1/img2img`, { ...body, resize_mode: 3 }),
      400,
      "resize_mode",
    );
    await assertRefused(
      await post(`${url}/sdapi/v1/img2img`, { ...body, initial_noise_multiplier: 0 }),
      400,
      "initial_noise_multiplier",
    );
    await assertRefused(
      await post(`${url}/sdapi/v1/img2img`, { ...body, enable_hr: false }),
      400,
      "enable_hr",
    );
  });
});

Deno.test("A1111 <lora:NAME:WEIGHT>: by short name and by repo id the adapter is applied (image differs, info names it); errors name the prompt", async () => {
  // offline: a repo id the Hub cache lacks is a 404 rather than the hub's failure
  await withServer({ HF_HUB_OFFLINE: "1" }, async ({ url }) => {
    const run = async (prompt: string, fields: Record<string, unknown> = {}) => {
      const res = await post(
        `${url}/sdapi/v1/txt2img`,
        txt2img({ prompt, seed: 9, sampler_name: "DDIM", ...fields }),
      );
      const body = await res.json();
      assertEquals(res.status, 200, JSON.stringify(body));
      return { image: body.images[0] as string, info: JSON.parse(body.info) };
    };
    const plain = await run(PROMPT);
    const short = await run(`${PROMPT} <lora:tiny-sd-shapes-smooth-lora:1>`);
    const byRepo = await run(`${PROMPT} <lora:${SMOOTH}:1>`);
    assert(!(await samePixels(plain.image, short.image)), "the adapter changes the image");
    assert(await samePixels(short.image, byRepo.image), "the short name is the repo");
    assertEquals(short.info.lora.map((l: { repo: string }) => l.repo), [SMOOTH]);
    assertEquals(short.info.prompt, `${PROMPT} <lora:tiny-sd-shapes-smooth-lora:1>`); // as A1111 keeps it
    assert(
      /^tiny-sd-shapes-smooth-lora: [0-9a-f]{12}$/.test(short.info.extra_generation_params["Lora hashes"]),
    );
    assert(
      short.info.infotexts[0].includes('Lora hashes: "tiny-sd-shapes-smooth-lora: '),
      short.info.infotexts[0],
    );
    // the tag comes out of the prompt: /generate with the rest of the prompt and the lora field
    const native = await (await post(`${url}/generate`, {
      prompt: `${PROMPT} `,
      width: 64,
      height: 64,
      steps: 8,
      seed: 9,
      guidance_scale: 7,
      lora: { repo: SMOOTH, scale: 1 },
    })).json();
    assert(await samePixels(short.image, native.images[0].data));
    const half = await run(`${PROMPT} <lora:tiny-sd-shapes-smooth-lora:0.5>`);
    assertEquals(half.info.lora[0].scale, 0.5);
    assert(!(await samePixels(half.image, short.image)), "the weight is the adapter's scale");
    // disable_extra_networks: the tag is taken out and not applied
    const disabled = await run(`${PROMPT}<lora:tiny-sd-shapes-smooth-lora:1>`, {
      disable_extra_networks: true,
    });
    assert(await samePixels(disabled.image, plain.image));
    assertEquals(disabled.info.lora, []);

    const refused = (prompt: string, fields: Record<string, unknown> = {}) =>
      post(`${url}/sdapi/v1/txt2img`, txt2img({ prompt, ...fields }));
    await assertRefused(await refused(`${PROMPT} <lora:no-such-lora:1>`), 404, "prompt");
    await assertRefused(await refused(`${PROMPT} <lora:smooth-diffusion/no-such-lora:1>`), 404, "prompt");
    await assertRefused(await refused(`${PROMPT} <lora:tiny-sd-shapes-smooth-lora:heavy>`), 400, "prompt");
    await assertRefused(await refused(`${PROMPT} <lora:tiny-sd-shapes-smooth-lora:1:0.5>`), 400, "prompt");
    await assertRefused(await refused(`${PROMPT} <lora:tiny-sd-shapes-smooth-lora:20>`), 400, "prompt");
    await assertRefused(await refused(`${PROMPT} <hypernet:anime:1>`), 400, "prompt");
    await assertRefused(
      await refused(PROMPT, { negative_prompt: "<lora:tiny-sd-shapes-smooth-lora:1>" }),
      400,
      "negative_prompt",
    );
  });
});

Deno.test("A1111 off-values: fields this server cannot honour are accepted when off and refused naming the field when on", async () => {
  await withServer({}, async ({ url }) => {
    // every off-value clients send, and the settings of switches that are off (ignored by A1111 too)
    const accepted = await post(
      `${url}/sdapi/v1/txt2img`,
      txt2img({
        seed: 4,
        steps: 4,
        styles: [],
        restore_faces: false,
        tiling: false,
        subseed: 1234,
        subseed_strength: 0,
        seed_resize_from_h: 0,
        seed_resize_from_w: 0,
        eta: 0,
        s_min_uncond: 0,
        s_churn: 0,
        s_tmax: 0,
        s_tmin: 0,
        s_noise: 1,
        override_settings: {
          sd_model_checkpoint: "tiny-sd-shapes",
          CLIP_stop_at_last_layers: 1,
          samples_format: "webp",
        },
        override_settings_restore_afterwards: true,
        refiner_checkpoint: "",
        refiner_switch_at: 0.8,
        firstpass_image: "",
        comments: {},
        hr_scale: 2,
        hr_upscaler: "Latent",
        hr_second_pass_steps: 10,
        hr_sampler_name: "Euler a",
        hr_prompt: "ignored without enable_hr",
        denoising_strength: 0.7,
        script_name: "",
        script_args: [1, 2],
        alwayson_scripts: {},
        infotext: "",
        force_task_id: "task(client-1)",
        scheduler: "automatic",
      }),
    );
    const body = await accepted.json();
    assertEquals(accepted.status, 200, JSON.stringify(body));
    // samples_format is honoured: the image is WebP
    assertEquals(body.images[0].slice(0, 4), btoa("RIFF").slice(0, 4));
    const none = await (await post(`${url}/sdapi/v1/txt2img`, txt2img({ steps: 2, send_images: false })))
      .json();
    assertEquals(none.images, []);

    const cases: [Record<string, unknown>, string][] = [
      [{ enable_hr: true }, "enable_hr"],
      [{ restore_faces: true }, "restore_faces"],
      [{ tiling: true }, "tiling"],
      [{ subseed_strength: 0.5 }, "subseed_strength"],
      [{ seed_resize_from_h: 256, seed_resize_from_w: 256 }, "seed_resize_from_h"],
      [{ styles: ["Cinematic"] }, "styles"],
      [{ eta: 0.5 }, "eta"],
      [{ s_churn: 1 }, "s_churn"],
      [{ s_min_uncond: 0.2 }, "s_min_uncond"],
      [{ refiner_checkpoint: "sd_xl_refiner_1.0" }, "refiner_checkpoint"],
      [{ firstphase_width: 256 }, "firstphase_width"],
      [{ firstpass_image: "iVBORw0KGgo=" }, "firstpass_image"],
      [{ comments: { note: "x" } }, "comments"],
      [{ script_name: "x/y/z plot" }, "script_name"],
      [{ save_images: true }, "save_images"],
      [{ infotext: "a cat\nSteps: 20" }, "infotext"],
      [{ alwayson_scripts: { controlnet: { args: [] } } }, "alwayson_scripts.controlnet"],
      [
        { override_settings: { sd_model_checkpoint: "v1-5-pruned-emaonly.safetensors" } },
        "override_settings.sd_model_checkpoint",
      ],
      [{ override_settings: { CLIP_stop_at_last_layers: 2 } }, "override_settings.CLIP_stop_at_last_layers"],
      [{ sampler_name: "DPM++ 2M" }, "sampler_name"],
      [{ sampler_name: null, sampler_index: "Euler a" }, "sampler_index"],
      [{ scheduler: "Karras" }, "scheduler"],
      [{ hr_additional_modules: [] }, "hr_additional_modules"], // not a field of A1111's API
      [JSON.parse('{"constructor": 1}'), "constructor"], // nor is a key of Object.prototype
      [{ enable_hr: "yes" }, "enable_hr"],
      [{ batch_size: 0 }, "batch_size"],
      [{ cfg_scale: 100 }, "cfg_scale"],
      [{ width: 100 }, "width"],
      [{ steps: 0 }, "steps"],
      [{ seed: -5 }, "seed"],
      [{ prompt: "" }, "prompt"],
    ];
    for (const [fields, field] of cases) {
      await assertRefused(await post(`${url}/sdapi/v1/txt2img`, txt2img(fields)), 400, field);
    }
    const notJson = await post(`${url}/sdapi/v1/txt2img`, "{not json");
    await assertRefused(notJson, 400, "body");
  });
});

Deno.test("A1111 listings: sd-models, samplers, schedulers, loras (the Hub caches' adapters), options", async () => {
  await withServer({}, async ({ url }) => {
    const get = async (path: string) => await (await fetch(`${url}/sdapi/v1/${path}`)).json();
    const models = await get("sd-models");
    assertEquals(models.map((m: { title: string; model_name: string }) => [m.title, m.model_name]), [[
      "tiny-sd-shapes",
      "tiny-sd-shapes",
    ]]);
    assertEquals((await get("samplers")).map((s: { name: string }) => s.name), ["DDIM", "Euler"]);
    assertEquals((await get("schedulers")).map((s: { label: string }) => s.label), ["Automatic"]);
    const loras = await get("loras");
    const smooth = loras.find((l: { alias: string }) => l.alias === SMOOTH);
    assert(smooth, JSON.stringify(loras));
    assertEquals(smooth.name, "tiny-sd-shapes-smooth-lora");
    assertEquals(smooth.metadata.file, "smooth_lora.safetensors");
    assert(/^[0-9a-f]{40}$/.test(smooth.metadata.commit));
    for (const lora of loras) assertEquals(Object.keys(lora).sort(), ["alias", "metadata", "name", "path"]);

    assertEquals((await get("options")).sd_model_checkpoint, "tiny-sd-shapes");
    const set = await post(`${url}/sdapi/v1/options`, { sd_model_checkpoint: "tiny-sd-shapes" });
    assertEquals([set.status, await set.json()], [200, null]);
    await assertRefused(
      await post(`${url}/sdapi/v1/options`, { sd_model_checkpoint: "other" }),
      400,
      "sd_model_checkpoint",
    );
    await assertRefused(
      await post(`${url}/sdapi/v1/options`, { samples_format: "webp" }),
      400,
      "samples_format",
    );
  });
});

Deno.test("A1111 progress and interrupt with concurrent requests: progress of all in flight and of each task; interrupt stops one by id_task or all, not /generate", async () => {
  await withServer({}, async ({ url }) => {
    const progress = async () =>
      await (await fetch(`${url}/sdapi/v1/progress?skip_current_image=true`)).json();
    const idle = await progress();
    assertEquals([idle.progress, idle.eta_relative, idle.state.job_count, idle.current_image], [
      0,
      0,
      0,
      null,
    ]);

    const long = (id: string) =>
      post(`${url}/sdapi/v1/txt2img`, txt2img({ steps: 150, seed: 1, force_task_id: id }));
    const replies = { a: long("a"), b: long("b"), c: long("c") };
    const nativeReply = post(`${url}/generate`, { prompt: PROMPT, steps: 150, seed: 1 });
    let seen;
    for (let i = 0; i < 1000; i++) {
      seen = await progress();
      if (
        seen.state.job_count === 3 &&
        seen.state.tasks.every((t: { sampling_step: number }) => t.sampling_step > 0)
      ) break;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    assertEquals(seen.state.tasks.map((t: { id_task: string }) => t.id_task).sort(), ["a", "b", "c"]);
    assertEquals(seen.state.sampling_steps, 450); // /generate's own request is not an A1111 task
    assert(seen.progress > 0 && seen.progress < 1, String(seen.progress));
    assertEquals(seen.progress, seen.state.sampling_step / seen.state.sampling_steps);
    assert(seen.eta_relative > 0 && seen.state.job === "scripts_txt2img");

    const one = await post(`${url}/sdapi/v1/interrupt?id_task=b`, {});
    assertEquals([one.status, (await one.json()).interrupted], [200, 1]);
    const b = await replies.b;
    const stopped = await b.json();
    assertEquals([b.status, stopped.error, Object.keys(stopped).sort()], [409, "interrupted", [
      "body",
      "detail",
      "error",
      "errors",
    ]]);
    const rest = await progress();
    assert(!rest.state.tasks.some((t: { id_task: string }) => t.id_task === "b"), JSON.stringify(rest.state));
    const all = await (await post(`${url}/sdapi/v1/interrupt`, {})).json();
    assertEquals(all.interrupted, rest.state.tasks.length);
    for (const reply of [replies.a, replies.c]) {
      const res = await reply;
      const body = await res.json();
      assertEquals([res.status, body.error], [409, "interrupted"], JSON.stringify(body));
    }
    assertEquals((await nativeReply).status, 200, "interrupt leaves /generate alone");
    assertEquals((await progress()).state.job_count, 0);
    // an interrupt does not outlive the requests it stopped
    const after = await post(`${url}/sdapi/v1/txt2img`, txt2img({ steps: 2 }));
    assertEquals(after.status, 200);
    await after.body?.cancel();

    // as an asynchronous job (Prefer: respond-async): the job and /sdapi/v1/progress both follow its steps
    const accepted = await post(`${url}/sdapi/v1/txt2img`, txt2img({ steps: 150, force_task_id: "job" }), {
      prefer: "respond-async",
    });
    assertEquals(accepted.status, 202);
    const location = accepted.headers.get("location")!;
    await accepted.body?.cancel();
    let polled = 0, finished;
    for (let i = 0; i < 2000 && !finished; i++) {
      const [job, ours] = [await fetch(`${url}${location}`), await progress()];
      if (job.status === 200) finished = await job.json();
      else if ((await job.json()).progress?.step > 0) {
        if (ours.state.tasks.some((t: { id_task: string; sampling_step: number }) => t.id_task === "job")) {
          polled++;
        }
      }
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    assert(polled > 0, "progress seen in the job and in /sdapi/v1/progress");
    assertEquals(finished.images.length, 1);
  });
});
