/**
 * The AUTOMATIC1111 web UI API (`/sdapi/v1/...`), the subset its clients use (Open WebUI,
 * SillyTavern, bots and scripts). txt2img and img2img are translated into this server's own /generate
 * request, validated and run by the same code (admission, batcher), and the reply and errors are
 * translated back into A1111's shapes. Field names, types and defaults are those of A1111's API
 * models (stable-diffusion-webui:modules/api/models.py, StableDiffusionTxt2ImgProcessingAPI and
 * StableDiffusionImg2ImgProcessingAPI, as of v1.10). Clients send every field, most at their "off"
 * values: a field this server cannot honour is accepted at the value that means off (or at any value
 * where A1111 itself ignores it, a setting of a switch that is off) and refused with a 400 naming it
 * otherwise; a field A1111 does not have is refused too.
 *
 * Many requests run at once here, where A1111 runs one: /sdapi/v1/progress reports on all the A1111
 * requests in flight together (and each by its task id), and /sdapi/v1/interrupt stops them all (or the
 * one named by `id_task`).
 */
import type { Context } from "hono";
import { z } from "zod";
import { ApiError, asApiError, fromZodError } from "./errors.ts";
import { type GenerateNative, type OffRule, refuseUnlessOff, translateErrors } from "./compat.ts";

/** An adapter file the Hub caches hold. */
type CachedAdapter = { repo: string; revision: string; commit: string; file: string };
import { isClientGone, isDeadline, isShutdown, SHUTDOWN_ERROR } from "./access.ts";
import { listenProgress } from "./jobs.ts";
import type { Route } from "./route.ts";

type Body = Record<string, unknown>;
type Kind = "txt2img" | "img2img";
type Handler = (c: Context) => Response | Promise<Response>;

const str = z.string(), int = z.number().int(), num = z.number(), bool = z.boolean();
const dict = z.record(z.string(), z.unknown());

/** StableDiffusionProcessing's fields as the API takes them: type and A1111's default. */
const COMMON: Record<string, [z.ZodType, unknown]> = {
  prompt: [str, ""],
  negative_prompt: [str, ""],
  styles: [z.array(str), null],
  seed: [int, -1],
  subseed: [int, -1],
  subseed_strength: [num, 0],
  seed_resize_from_h: [int, -1],
  seed_resize_from_w: [int, -1],
  sampler_name: [str, null],
  scheduler: [str, null],
  batch_size: [int.min(1), 1],
  n_iter: [int.min(1), 1],
  steps: [int, 50],
  cfg_scale: [num, 7.0],
  width: [int, 512],
  height: [int, 512],
  restore_faces: [bool, null],
  tiling: [bool, null],
  do_not_save_samples: [bool, false],
  do_not_save_grid: [bool, false],
  eta: [num, null],
  denoising_strength: [num, null],
  s_min_uncond: [num, null],
  s_churn: [num, null],
  s_tmax: [num, null],
  s_tmin: [num, null],
  s_noise: [num, null],
  override_settings: [dict, null],
  override_settings_restore_afterwards: [bool, true],
  refiner_checkpoint: [str, null],
  refiner_switch_at: [num, null],
  disable_extra_networks: [bool, false],
  firstpass_image: [str, null],
  comments: [dict, null],
};
/** The fields models.py adds to both routes' models. */
const API_FIELDS: Record<string, [z.ZodType, unknown]> = {
  force_task_id: [str, null],
  sampler_index: [str, "Euler"],
  script_name: [str, null],
  script_args: [z.array(z.unknown()), []],
  send_images: [bool, true],
  save_images: [bool, false],
  alwayson_scripts: [dict, {}],
  infotext: [str, null],
};
const FIELDS: Record<Kind, Record<string, [z.ZodType, unknown]>> = {
  txt2img: {
    ...COMMON,
    enable_hr: [bool, false],
    firstphase_width: [int, 0],
    firstphase_height: [int, 0],
    hr_scale: [num, 2.0],
    hr_upscaler: [str, null],
    hr_second_pass_steps: [int, 0],
    hr_resize_x: [int, 0],
    hr_resize_y: [int, 0],
    hr_checkpoint_name: [str, null],
    hr_sampler_name: [str, null],
    hr_scheduler: [str, null],
    hr_prompt: [str, ""],
    hr_negative_prompt: [str, ""],
    ...API_FIELDS,
  },
  img2img: {
    ...COMMON,
    init_images: [z.array(str), null],
    resize_mode: [int, 0],
    image_cfg_scale: [num, null],
    mask: [str, null],
    mask_blur_x: [int, 4],
    mask_blur_y: [int, 4],
    mask_blur: [int, null],
    mask_round: [bool, true],
    inpainting_fill: [int, 0],
    inpaint_full_res: [bool, true],
    inpaint_full_res_padding: [int, 0],
    inpainting_mask_invert: [int, 0],
    initial_noise_multiplier: [num, null],
    latent_mask: [str, null],
    denoising_strength: [num, 0.75],
    include_init_images: [bool, false],
    ...API_FIELDS,
  },
};
const fieldsOf = (kind: Kind) => Object.entries(FIELDS[kind]);
const SCHEMAS: Record<Kind, z.ZodType> = {
  txt2img: z.object(
    Object.fromEntries(fieldsOf("txt2img").map(([k, [type]]) => [k, type.nullable().optional()])),
  ),
  img2img: z.object(
    Object.fromEntries(fieldsOf("img2img").map(([k, [type]]) => [k, type.nullable().optional()])),
  ),
};
const DEFAULTS: Record<Kind, Body> = {
  txt2img: Object.fromEntries(fieldsOf("txt2img").map(([k, [, value]]) => [k, value])),
  img2img: Object.fromEntries(fieldsOf("img2img").map(([k, [, value]]) => [k, value])),
};

const empty = (v: unknown) =>
  v === "" || (Array.isArray(v) && v.length === 0) ||
  (typeof v === "object" && v !== null && Object.keys(v).length === 0);
const only = (values: unknown[], why: string): OffRule => ({ off: (v) => values.includes(v), why });
const noSeedResize: OffRule = {
  off: (_, b) => !(Number(b.seed_resize_from_h) > 0 && Number(b.seed_resize_from_w) > 0),
  why: "no seed resize",
};

/**
 * What this server does not do, with the values that ask nothing of it. Not listed (accepted at any
 * value, as A1111 ignores them too): the settings of a switch that is off here (subseed without
 * subseed_strength; s_tmin, s_tmax, s_noise without s_churn; refiner_switch_at without a refiner;
 * script_args without script_name; the hr_* fields and txt2img's denoising_strength without
 * enable_hr; mask_*, inpaint*, latent_mask without a mask), do_not_save_* (A1111 sets them from
 * save_images), override_settings_restore_afterwards (nothing here outlives a request) and
 * image_cfg_scale (only instruct-pix2pix models use it).
 */
const OFF: Record<string, OffRule> = {
  styles: { off: empty, why: "no prompt styles are stored here" },
  subseed_strength: only([0], "no variation seeds"),
  seed_resize_from_h: noSeedResize,
  seed_resize_from_w: noSeedResize,
  restore_faces: only([false], "no face restoration"),
  tiling: only([false], "no tiling"),
  eta: only([0], "DDIM runs with eta 0 here, and Euler takes none"),
  s_min_uncond: only([0], "no NGMS (skipping the unconditional pass)"),
  s_churn: only([0], "no churn"),
  refiner_checkpoint: only(["", "None", "none"], "no refiner model"),
  firstpass_image: only([""], "no hires fix"),
  comments: { off: empty, why: "no infotext comments are written" },
  enable_hr: only([false], "no hires fix (a second, upscaled pass)"),
  firstphase_width: only([0], "no hires fix"),
  firstphase_height: only([0], "no hires fix"),
  script_name: only([""], "no scripts are installed here"),
  save_images: only([false], "this server saves no files (the images come back in the reply)"),
  infotext: only([""], "infotexts are not read here: send the fields"),
  mask: only([""], "no inpainting"),
  resize_mode: only([0, 1], "0 (just resize) and 1 (crop and resize) only"),
  initial_noise_multiplier: only([1], "the initial noise is not rescaled here"),
};

/** The samplers this server has: its schedulers under A1111's names. */
const SAMPLERS = [
  { name: "DDIM", aliases: ["ddim"], scheduler: "ddim" },
  { name: "Euler", aliases: ["k_euler"], scheduler: "euler" },
] as const;
type Sampler = typeof SAMPLERS[number];

/** A1111's extra-network syntax (stable-diffusion-webui:modules/extra_networks.py). */
const EXTRA_NETWORK = /<(\w+):([^>]+)>/g;

/** The native fields that an A1111 request names otherwise. */
const NATIVE_TO_A1111: Record<string, string> = {
  guidance_scale: "cfg_scale",
  scheduler: "sampler_name",
  lora: "prompt",
  image: "init_images",
  strength: "denoising_strength",
  fit: "resize_mode",
  output_format: "override_settings.samples_format",
};

/**
 * A1111's error body (stable-diffusion-webui:modules/api/api.py, handle_exception), its detail
 * beginning with the field.
 */
function a1111Error(error: ApiError) {
  const detail = error.field === undefined || error.message.startsWith(`${error.field}: `)
    ? error.message
    : `${error.field}: ${error.message}`;
  return { error: error.code, detail, body: "", errors: `${error.status}: ${detail}` };
}

/** generation_parameters_copypaste.quote: values with separators in them are JSON strings. */
const quote = (text: string) => /[,\n:]/.test(text) ? JSON.stringify(text) : text;

/** A1111's infotext of one image: the prompt, the negative prompt and `Key: value` pairs. */
function infotext(prompt: string, negative: string, params: [string, unknown][]): string {
  const pairs = params.filter(([, v]) => v !== null && v !== undefined).map(([k, v]) =>
    `${k}: ${quote(String(v))}`
  );
  return `${prompt}${negative ? `\nNegative prompt: ${negative}` : ""}\n${pairs.join(", ")}`.trim();
}

/** A1111's job timestamp (%Y%m%d%H%M%S). */
function timestamp(ms: number): string {
  return new Date(ms).toISOString().replace(/[-:T]/g, "").slice(0, 14);
}

interface Task {
  id: string;
  kind: Kind;
  started: number;
  step: number;
  total: number;
  interrupted: boolean;
  stop: () => void;
}

interface Deps {
  model: string;
  /** The adapters the Hub caches hold (the engine's registry reads them). */
  cachedAdapters: () => Promise<CachedAdapter[]>;
  generate: GenerateNative;
}

/** A settings value (override_settings, POST /sdapi/v1/options) that asks for what this server does. */
function settingHonoured(model: string, key: string, value: unknown, perRequest: boolean): boolean {
  switch (key) {
    case "sd_model_checkpoint":
      return value === model;
    case "CLIP_stop_at_last_layers":
      return typeof value === "number" && value <= 1;
    case "sd_vae":
      return value === "Automatic" || value === "None";
    case "samples_format": // per request: the images' format
      return perRequest ? ["png", "jpg", "jpeg", "webp"].includes(value as string) : value === "png";
    default:
      return false;
  }
}

function refuseSettings(model: string, settings: Body, perRequest: boolean, prefix: string): void {
  for (const [key, value] of Object.entries(settings)) {
    if (settingHonoured(model, key, value, perRequest)) continue;
    const field = `${prefix}${key}`;
    throw new ApiError(
      400,
      "unsupported_value",
      `${field}: ${JSON.stringify(value)} is not supported by this server (it serves ${model}; settings it ` +
        `takes: sd_model_checkpoint ${model}, CLIP_stop_at_last_layers 1, sd_vae Automatic, samples_format)`,
      field,
    );
  }
}

/** The request checked: no field A1111 lacks, each of its type, none asking what this server cannot do. */
function check(kind: Kind, raw: unknown, model: string): Body {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new ApiError(400, "invalid_request", "body: expected a JSON object", "body");
  }
  const body = raw as Body;
  for (const key of Object.keys(body)) {
    if (!Object.hasOwn(FIELDS[kind], key)) { // own keys: "constructor" or "__proto__" is no field
      throw new ApiError(400, "unknown_field", `${key}: not a field of A1111's ${kind} API`, key);
    }
  }
  const parsed = SCHEMAS[kind].safeParse(body);
  if (!parsed.success) throw fromZodError(parsed.error);
  refuseUnlessOff(body, OFF);
  const scripts = body.alwayson_scripts as Body | null | undefined;
  const script = scripts && Object.keys(scripts)[0];
  if (script !== undefined) {
    throw new ApiError(
      400,
      "unsupported_value",
      `alwayson_scripts.${script}: no scripts (extensions such as ControlNet) are installed here`,
      `alwayson_scripts.${script}`,
    );
  }
  refuseSettings(model, (body.override_settings ?? {}) as Body, true, "override_settings.");
  return body;
}

/** sampler_name (or, without it, sampler_index, "Euler" by default) and scheduler, onto our schedulers. */
function samplerOf(body: Body): Sampler {
  const field = body.sampler_name ? "sampler_name" : "sampler_index";
  const name = String(body.sampler_name || body.sampler_index || "Euler");
  const sampler = SAMPLERS.find((s) =>
    [s.name, ...s.aliases].some((n) => n.toLowerCase() === name.toLowerCase())
  );
  if (!sampler) {
    throw new ApiError(
      400,
      "unsupported_value",
      `${field}: ${
        JSON.stringify(name)
      } is not a sampler of this server: DDIM or Euler (GET /sdapi/v1/samplers)`,
      field,
    );
  }
  const scheduler = body.scheduler;
  if (scheduler && !["automatic"].includes(String(scheduler).toLowerCase())) {
    throw new ApiError(
      400,
      "unsupported_value",
      `scheduler: ${JSON.stringify(scheduler)} is not supported by this server: Automatic only (each ` +
        "sampler's own schedule here; GET /sdapi/v1/schedulers)",
      "scheduler",
    );
  }
  return sampler;
}

interface LoraTag {
  tag: string;
  name: string;
  weight: number;
}

/** `<lora:NAME>` and `<lora:NAME:WEIGHT>` taken out of the prompt, as A1111 takes extra networks out. */
function extraNetworks(prompt: string, negative: string): { text: string; loras: LoraTag[] } {
  const inNegative = negative.match(EXTRA_NETWORK);
  if (inNegative) {
    throw new ApiError(
      400,
      "unsupported_value",
      `negative_prompt: ${inNegative[0]}: extra networks go in the prompt here`,
      "negative_prompt",
    );
  }
  const loras: LoraTag[] = [];
  for (const [tag, kind, args] of prompt.matchAll(EXTRA_NETWORK)) {
    if (kind !== "lora" && kind !== "lyco") {
      throw new ApiError(
        400,
        "unsupported_value",
        `prompt: ${tag}: only <lora:NAME:WEIGHT> extra networks are supported here`,
        "prompt",
      );
    }
    const [name, ...rest] = args.split(":").map((part) => part.trim());
    const weight = rest.length === 0 ? 1 : rest[0] === "" ? NaN : Number(rest[0]);
    if (!name || rest.length > 1 || !Number.isFinite(weight)) {
      throw new ApiError(
        400,
        "invalid_request",
        `prompt: ${tag}: expected <lora:NAME> or <lora:NAME:WEIGHT> with a number for WEIGHT (adapters ` +
          "apply to the UNet here, so there is no separate text-encoder weight)",
        "prompt",
      );
    }
    loras.push({ tag, name, weight });
  }
  return { text: prompt.replace(EXTRA_NETWORK, ""), loras };
}

/** Short names: a repo's name in the Hub caches (as /sdapi/v1/loras lists them); `org/name`: a repo id. */
async function loraSpecs(loras: LoraTag[], cachedAdapters: () => Promise<CachedAdapter[]>) {
  let cached: CachedAdapter[] | undefined;
  const specs: { repo: string; revision?: string; scale: number }[] = [];
  for (const { tag, name, weight } of loras) {
    if (name.includes("/")) {
      specs.push({ repo: name, scale: weight });
      continue;
    }
    cached ??= await cachedAdapters();
    const matches = cached.filter((a) => a.repo.split("/")[1] === name);
    if (matches.length !== 1) {
      throw new ApiError(
        matches.length ? 400 : 404,
        matches.length ? "adapter_ambiguous" : "adapter_not_found",
        matches.length
          ? `prompt: ${tag}: ${name} is ${matches.map((m) => m.repo).join(" and ")}: name the repo (org/name)`
          : `prompt: ${tag}: no adapter named ${name} in the Hub caches (GET /sdapi/v1/loras lists them); ` +
            "name a Hub repo as org/name",
        "prompt",
      );
    }
    specs.push({ repo: matches[0].repo, revision: matches[0].revision, scale: weight });
  }
  return specs;
}

/** A native error in the A1111 request's own terms. */
function renamed(error: ApiError, body: Body): ApiError {
  if (error.field === undefined) return error;
  const head = error.field.split(".")[0];
  const rest = error.message.startsWith(`${error.field}: `)
    ? error.message.slice(error.field.length + 2)
    : error.message;
  // own keys only: a client's field "constructor" is not Object.prototype's
  let field = Object.hasOwn(NATIVE_TO_A1111, head) ? NATIVE_TO_A1111[head] : error.field;
  let message = `${field}: ${rest}`;
  if (head === "num_images") {
    const [b, n] = [Number(body.batch_size ?? 1), Number(body.n_iter ?? 1)];
    field = n > 1 ? "n_iter" : "batch_size";
    message = `${field}: batch_size x n_iter is ${b * n} images, one run here: ${rest}`;
  }
  return new ApiError(error.status, error.code, message, field, error.headers);
}

/** How an unfinished request ended, as an ApiError, so that it gets A1111's error shape too. */
function ended(c: Context, error: unknown, task: Task): unknown {
  if (error instanceof ApiError) return error;
  if (task.interrupted) {
    return new ApiError(
      409,
      "interrupted",
      "interrupted by POST /sdapi/v1/interrupt before its images were done",
    );
  }
  if (isDeadline(c, error)) {
    return new ApiError(504, "deadline_exceeded", "the request ran past its deadline");
  }
  if (isShutdown(c, error)) {
    return new ApiError(503, SHUTDOWN_ERROR.code, SHUTDOWN_ERROR.message, undefined, { "Retry-After": "1" });
  }
  if (isClientGone(c)) return new ApiError(499 as 400, "client_closed", "the client went away");
  console.error(error);
  return new ApiError(500, "internal", "internal error");
}

/** The /sdapi/v1 routes, for the route table: txt2img and img2img are model tasks. */
export function a1111Routes(deps: Deps): Route[] {
  const { model, cachedAdapters, generate } = deps;
  const tasks = new Set<Task>();

  const run = (kind: Kind) => (c: Context) =>
    translateErrors(c, async () => {
      const raw = await c.req.json().catch(() => {
        throw new ApiError(400, "invalid_json", "body: not valid JSON", "body");
      });
      const body = check(kind, raw ?? {}, model);
      const sampler = samplerOf(body);
      const prompt = String(body.prompt ?? ""), negative = String(body.negative_prompt ?? "");
      const { text, loras } = extraNetworks(prompt, negative);
      const applied = body.disable_extra_networks ? [] : loras;
      const [batch, iterations] = [Number(body.batch_size ?? 1), Number(body.n_iter ?? 1)];
      const steps = Number(body.steps ?? 50);
      const native: Body = {
        prompt: text,
        negative_prompt: negative,
        steps,
        guidance_scale: body.cfg_scale ?? 7.0,
        scheduler: sampler.scheduler,
        num_images: batch * iterations,
        output_format: String((body.override_settings as Body | null)?.samples_format ?? "png").replace(
          "jpg",
          "jpeg",
        ),
      };
      for (const key of ["width", "height"]) {
        if (body[key] !== undefined && body[key] !== null) native[key] = body[key];
      }
      if (body.seed !== undefined && body.seed !== null && body.seed !== -1) native.seed = body.seed;
      if (applied.length) native.lora = await loraSpecs(applied, cachedAdapters);
      if (kind === "img2img") {
        const images = body.init_images as string[] | null | undefined;
        if (!images?.length || images.length > 1) {
          throw new ApiError(
            400,
            "invalid_request",
            `init_images: ${images?.length ? "one image only here" : "required (one base64 image)"}`,
            "init_images",
          );
        }
        native.image = images[0];
        native.strength = body.denoising_strength ?? 0.75;
        native.fit = body.resize_mode === 1 ? "cover" : "fill";
      }
      const strength = Number(native.strength ?? 1);
      const task: Task = {
        id: String(body.force_task_id || `task(${crypto.randomUUID()})`),
        kind,
        started: Date.now(),
        step: 0,
        total: kind === "img2img" ? Math.min(Math.floor(steps * strength), steps) : steps,
        interrupted: false,
        stop: () => (c.get("leave") as (() => void) | undefined)?.(),
      };
      tasks.add(task);
      listenProgress(c.req.raw, (step, total) => {
        task.step = step;
        task.total = total;
      });
      let result;
      try {
        result = await (await generate(c, native)).json();
      } catch (error) {
        const known = asApiError(error);
        throw known ? renamed(known, body) : ended(c, error, task);
      } finally {
        tasks.delete(task);
      }
      return c.json(reply(kind, body, result, sampler, applied));
    }, a1111Error);

  /** A1111's TextToImageResponse / ImageToImageResponse for a native reply. */
  function reply(kind: Kind, body: Body, result: any, sampler: Sampler, loras: LoraTag[]) {
    const images: { data: string; seed: number; width: number; height: number }[] = result.images;
    const seeds = images.map((image) => image.seed);
    const [width, height] = [images[0].width, images[0].height];
    const prompt = String(body.prompt ?? ""), negative = String(body.negative_prompt ?? "");
    const cfg = body.cfg_scale ?? 7.0, steps = body.steps ?? 50;
    const strength = kind === "img2img" ? result.parameters.strength : null;
    const report: { commit: string }[] = result.parameters.lora ?? [];
    const extra: Body = report.length
      ? { "Lora hashes": report.map((r, i) => `${loras[i].name}: ${r.commit.slice(0, 12)}`).join(", ") }
      : {};
    const subseed = Number(body.subseed ?? -1);
    const info = {
      prompt,
      all_prompts: seeds.map(() => prompt),
      negative_prompt: negative,
      all_negative_prompts: seeds.map(() => negative),
      seed: seeds[0],
      all_seeds: seeds,
      subseed,
      all_subseeds: seeds.map((_, i) => subseed < 0 ? subseed : subseed + i),
      subseed_strength: body.subseed_strength ?? 0,
      width,
      height,
      sampler_name: sampler.name,
      cfg_scale: cfg,
      steps,
      batch_size: body.batch_size ?? 1,
      restore_faces: body.restore_faces ?? null,
      face_restoration_model: null,
      sd_model_name: model,
      sd_model_hash: null,
      sd_vae_name: null,
      sd_vae_hash: null,
      seed_resize_from_w: body.seed_resize_from_w ?? -1,
      seed_resize_from_h: body.seed_resize_from_h ?? -1,
      denoising_strength: strength,
      extra_generation_params: extra,
      index_of_first_image: 0, // no grid image first
      infotexts: seeds.map((seed) =>
        infotext(prompt, negative, [
          ["Steps", steps],
          ["Sampler", sampler.name],
          ["CFG scale", cfg],
          ["Seed", seed],
          ["Size", `${width}x${height}`],
          ["Model", model],
          ["Denoising strength", strength],
          ...Object.entries(extra),
        ])
      ),
      styles: body.styles ?? [],
      job_timestamp: timestamp(Date.now()),
      clip_skip: 1,
      is_using_inpainting_conditioning: false,
      version: null,
      // this server's: each adapter applied with its resolved commit
      lora: result.parameters.lora ?? [],
    };
    const parameters: Body = { ...DEFAULTS[kind], ...body, width, height };
    if (kind === "img2img" && !body.include_init_images) {
      Object.assign(parameters, { init_images: null, mask: null });
    }
    return {
      images: body.send_images === false ? [] : images.map((image) => image.data),
      parameters,
      info: JSON.stringify(info),
    };
  }

  const progress: Handler = (c) => {
    const now = Date.now(), running = [...tasks];
    const step = running.reduce((sum, t) => sum + t.step, 0);
    const steps = running.reduce((sum, t) => sum + t.total, 0);
    const eta = running.map((t) => {
      const elapsed = (now - t.started) / 1000;
      return elapsed / Math.max(0.01, t.total ? t.step / t.total : 0) - elapsed;
    });
    return c.json({
      progress: steps ? step / steps : 0,
      eta_relative: Math.max(0, ...eta),
      state: {
        skipped: false,
        interrupted: false,
        stopping_generation: false,
        job: [...new Set(running.map((t) => `scripts_${t.kind}`))].join(", "),
        job_count: running.length,
        job_timestamp: running.length ? timestamp(Math.min(...running.map((t) => t.started))) : "0",
        job_no: 0,
        sampling_step: step,
        sampling_steps: steps,
        // this server's: each request in flight
        tasks: running.map((t) => ({
          id_task: t.id,
          job: `scripts_${t.kind}`,
          sampling_step: t.step,
          sampling_steps: t.total,
          progress: t.total ? t.step / t.total : 0,
          interrupted: t.interrupted,
        })),
      },
      current_image: null,
      textinfo: null,
    });
  };

  const interrupt: Handler = (c) => {
    const wanted = c.req.query("id_task");
    let interrupted = 0;
    for (const task of tasks) {
      if (wanted !== undefined && task.id !== wanted) continue;
      task.interrupted = true;
      task.stop();
      interrupted++;
    }
    return c.json({ interrupted });
  };

  const loras: Handler = async (c) =>
    c.json((await cachedAdapters()).map((a) => ({
      name: a.repo.split("/")[1],
      alias: a.repo,
      path: `${a.repo}/${a.file}`,
      metadata: { repo: a.repo, revision: a.revision, commit: a.commit, file: a.file },
    })));

  const setOptions: Handler = (c) =>
    translateErrors(c, async () => {
      const body = await c.req.json().catch(() => {
        throw new ApiError(400, "invalid_json", "body: not valid JSON", "body");
      });
      if (typeof body !== "object" || body === null || Array.isArray(body)) {
        throw new ApiError(400, "invalid_request", "body: expected a JSON object", "body");
      }
      refuseSettings(model, body, false, "");
      return c.json(null);
    }, a1111Error);

  const listing = (path: string, reply: unknown): Route => ({
    method: "GET",
    path,
    task: false,
    handler: (c) => c.json(reply),
  });
  return [
    { method: "POST", path: "/sdapi/v1/txt2img", task: true, handler: run("txt2img") },
    { method: "POST", path: "/sdapi/v1/img2img", task: true, handler: run("img2img") },
    { method: "GET", path: "/sdapi/v1/progress", task: false, handler: progress },
    { method: "POST", path: "/sdapi/v1/interrupt", task: false, handler: interrupt },
    listing("/sdapi/v1/sd-models", [{
      title: model,
      model_name: model,
      hash: null,
      sha256: null,
      filename: model,
      config: null,
    }]),
    listing(
      "/sdapi/v1/samplers",
      SAMPLERS.map((s) => ({ name: s.name, aliases: s.aliases, options: { scheduler: s.scheduler } })),
    ),
    listing("/sdapi/v1/schedulers", [{
      name: "automatic",
      label: "Automatic",
      aliases: null,
      default_rho: -1,
      need_inner_model: false,
    }]),
    { method: "GET", path: "/sdapi/v1/loras", task: false, handler: loras },
    listing("/sdapi/v1/options", {
      sd_model_checkpoint: model,
      CLIP_stop_at_last_layers: 1,
      sd_vae: "Automatic",
      samples_format: "png",
    }),
    { method: "POST", path: "/sdapi/v1/options", task: false, handler: setOptions },
  ];
}
