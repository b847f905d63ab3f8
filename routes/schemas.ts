/** Request and response schemas (zod): the validators and the source of /openapi.json. */
import { z } from "zod";
import { SCHEDULER_NAMES } from "../pipeline/scheduler.ts";
import { FORMAT_NAMES, MAX_SIDE, OUTPUT_FORMATS, type OutputFormat } from "../pipeline/image.ts";
import { MAX_SEED } from "../pipeline/rng.ts";
import { FIT_MODES } from "../pipeline/image_input.ts";
import { INVERSION_METHODS } from "../pipeline/invert.ts";

export interface Limits {
  maxSteps: number;
  maxPixels: number;
  maxImages: number;
  /** The bytes the largest single model run of a request needs where that exceeds the budget (see DiffusionModel.runTooLarge). */
  runTooLarge?: (width: number, height: number, unetRows: number, imageRows: number) => number | undefined;
  memoryBudgetBytes?: number;
}

const gib = (bytes: number) => `${(bytes / 2 ** 30).toFixed(2)} GiB`;

/**
 * A request whose largest model run could never fit the memory budget is refused before any work,
 * naming the field to change: the image count where one image alone would fit, else the size.
 */
function checkMemory(
  limits: Limits,
  ctx: z.RefinementCtx,
  size: { width?: number; height?: number },
  rowsPerImage: number,
  images = 1,
) {
  const needed = limits.runTooLarge?.(size.width ?? NaN, size.height ?? NaN, rowsPerImage * images, images);
  if (needed === undefined) return;
  const oneFits = images > 1 &&
    limits.runTooLarge!(size.width ?? NaN, size.height ?? NaN, rowsPerImage, 1) === undefined;
  const path = oneFits ? "num_images" : (size.width ?? 0) >= (size.height ?? 0) ? "width" : "height";
  ctx.addIssue({
    code: "too_big",
    origin: "number",
    maximum: limits.memoryBudgetBytes ?? 0,
    inclusive: true,
    path: [path],
    message: `one model run of this request needs about ${gib(needed)}; the memory budget is ` +
      `${gib(limits.memoryBudgetBytes ?? 0)} (MEMORY_BUDGET_BYTES): lower ${path}`,
  });
}
/** Rows one image takes in a UNet run: two with classifier-free guidance. */
const rowsFor = (guidance: number) => guidance === 1 ? 1 : 2;

const REPO_ID = /^[A-Za-z0-9][\w.-]{0,95}\/[A-Za-z0-9][\w.-]{0,95}$/;
const REVISION = /^[\w.-]+(\/[\w.-]+)*$/;
const RELATIVE_FILE = /^(?!\/)(?!.*(^|\/)\.\.?(\/|$))(?!.*:\/\/)[\w.\/-]+\.safetensors$/;

export const loraSpecSchema = z.object({
  repo: z.string().regex(REPO_ID, { message: "must be a Hugging Face repo id: org/name" }),
  file: z.string().max(256).regex(RELATIVE_FILE, {
    message: "must be a relative path to a .safetensors file in the repo (no '..', no URL)",
  }).optional(),
  revision: z.string().max(128).regex(REVISION, { message: "must be a branch, tag or commit" })
    .refine((r) => !r.split("/").includes(".."), { message: "must not contain '..'" }).default("main"),
  scale: z.number().min(-8).max(8).default(1),
}).strict();

export const loraFieldSchema = z.union([loraSpecSchema, z.array(loraSpecSchema).min(1).max(4)], {
  error: "must be an adapter {repo, file?, revision?, scale?} or a list of 1 to 4 of them",
}).optional()
  .describe("One LoRA adapter from the Hugging Face Hub, or a list of up to 4 to stack.");

const side = z.number().int().min(8).max(4096).multipleOf(8, { message: "must be a multiple of 8" });

const imageField = z.string().min(1).describe("base64 (or a data URL) of a PNG, JPEG or WebP image");
const fitField = z.enum(FIT_MODES).default("cover").describe("how the image is fitted to the model's size");

export interface NativeSize {
  width: number;
  height: number;
}

export function generateRequestSchema(limits: Limits, native: NativeSize) {
  return z.object({
    prompt: z.string().min(1).max(4000).describe("What to draw."),
    negative_prompt: z.string().max(4000).default("").describe(
      "Used as the unconditional prompt of guidance.",
    ),
    width: side.default(native.width).describe("Pixels, a multiple of 8; default: the model's native width."),
    height: side.default(native.height).describe(
      "Pixels, a multiple of 8; default: the model's native height.",
    ),
    steps: z.number().int().min(1).max(limits.maxSteps).default(50),
    guidance_scale: z.number().min(0).max(50).default(7.5).describe(
      "Classifier-free guidance weight; 1 disables it.",
    ),
    seed: z.number().int().min(0).max(MAX_SEED).optional().describe(
      "uint32; random when absent, always returned.",
    ),
    scheduler: z.enum(SCHEDULER_NAMES).default("ddim"),
    num_images: z.number().int().min(1).max(limits.maxImages).default(1),
    output_format: z.enum(OUTPUT_FORMATS).default("png"),
    lora: loraFieldSchema,
    image: imageField.optional().describe("img2img: start from this image (fitted to width x height)"),
    strength: z.number().min(0).max(1).optional().describe(
      "img2img: how much of the schedule to run from the image; 0 returns its VAE reconstruction, 1 ignores it (default 0.8)",
    ),
    fit: fitField,
  }).strict().superRefine((body, ctx) => {
    if (body.strength !== undefined && body.image === undefined) {
      ctx.addIssue({ code: "custom", path: ["strength"], message: "strength goes with an image (img2img)" });
    }
    checkWork(limits, ctx, body, rowsFor(body.guidance_scale), body.num_images);
  });
}

export type GenerateRequest = z.infer<ReturnType<typeof generateRequestSchema>>;

export const imageResultSchema = z.object({
  data: z.string().describe("base64 of the encoded image"),
  seed: z.number().int(),
  format: z.enum(OUTPUT_FORMATS),
  width: z.number().int(),
  height: z.number().int(),
});

export const generateResponseSchema = z.object({
  images: z.array(imageResultSchema),
  parameters: z.record(z.string(), z.unknown()),
  timings: z.record(z.string(), z.number()).describe("milliseconds per stage"),
});

export const errorSchema = z.object({
  error: z.object({ code: z.string(), message: z.string(), field: z.string().optional() }),
});

// ---------------------------------------------------------------- image routes
export interface ImageRouteLimits extends Limits {
  maxFrames: number;
}

export const latentSchema = z.object({
  shape: z.array(z.number().int().min(1).max(4096)).length(4),
  dtype: z.literal("float32"),
  data: z.string(),
}).strict().describe("a latent as /invert returns it: base64 of little-endian float32");
const steps = (limits: Limits) => z.number().int().min(1).max(limits.maxSteps).default(50);
/** The size image inputs are fitted to and seed endpoints are drawn at. */
const sizeFields = {
  width: side.optional().describe("Pixels, a multiple of 8; default: the model's native width."),
  height: side.optional().describe("Pixels, a multiple of 8; default: the model's native height."),
};

/**
 * The pixel cap (width x height x images, where the size is given), then the memory budget: one check
 * of a request's whole work for every route.
 */
function checkWork(
  limits: Limits,
  ctx: z.RefinementCtx,
  size: { width?: number; height?: number },
  rowsPerImage: number,
  images = 1,
) {
  const { width, height } = size;
  if (width !== undefined && height !== undefined && width * height * images > limits.maxPixels) {
    ctx.addIssue({
      code: "too_big",
      origin: "number",
      maximum: limits.maxPixels,
      inclusive: true,
      path: [width >= height ? "width" : "height"],
      message: `width x height${images > 1 ? " x num_images" : ""} is ${width * height * images} pixels; ` +
        `the limit is ${limits.maxPixels}`,
    });
    return;
  }
  checkMemory(limits, ctx, size, rowsPerImage, images);
}

/** The same check for the routes whose size is optional (one image, guided: 2 rows). */
const checkSize = (limits: Limits) => (body: { width?: number; height?: number }, ctx: z.RefinementCtx) =>
  checkWork(limits, ctx, body, 2);

/** Pixels of the image a latent decodes to. */
const latentPixels = (latent: { shape: number[] }) => ({
  width: latent.shape[3] * 8,
  height: latent.shape[2] * 8,
});

/**
 * Images that the chosen encoder cannot write (WebP holds 16383 pixels per side) are refused at
 * validation, naming the field that chose the format; only latent inputs reach such sizes.
 */
function checkEncodable(
  ctx: z.RefinementCtx,
  size: { width: number; height: number },
  format: OutputFormat | "gif",
  field: string,
) {
  const max = MAX_SIDE[format];
  if (size.width <= max && size.height <= max) return;
  ctx.addIssue({
    code: "too_big",
    origin: "number",
    maximum: max,
    inclusive: true,
    path: [field],
    message: `${FORMAT_NAMES[format]} holds at most ${max} pixels per side and these images would be ` +
      `${size.width} x ${size.height}: choose another format, or a smaller latent`,
  });
}

export function invertRequestSchema(limits: Limits) {
  return z.object({
    image: imageField,
    prompt: z.string().max(4000).default("").describe("the image's caption; inversion is conditioned on it"),
    steps: steps(limits),
    method: z.enum(INVERSION_METHODS).default("ddim"),
    guidance_scale: z.number().min(0).max(50).default(1).describe("guidance of the reconstruction"),
    fit: fitField,
    ...sizeFields,
    output_format: z.enum(OUTPUT_FORMATS).default("png"),
    lora: loraFieldSchema,
  }).strict().superRefine(checkSize(limits));
}

export function editRequestSchema(limits: Limits) {
  return z.object({
    image: imageField.optional(),
    latent: latentSchema.optional().describe("x_T from /invert, instead of the image"),
    source_prompt: z.string().max(4000),
    target_prompt: z.string().max(4000),
    ratio: z.number().min(0).max(1).default(0.8).describe(
      "r: source prompt for the first (1 - r) N steps, then the target",
    ),
    steps: steps(limits),
    guidance_scale: z.number().min(0).max(50).default(7.5),
    method: z.enum(INVERSION_METHODS).default("ddim").describe("how the image is inverted"),
    return_reconstruction: z.boolean().default(false),
    fit: fitField,
    ...sizeFields,
    output_format: z.enum(OUTPUT_FORMATS).default("png"),
    lora: loraFieldSchema,
  }).strict().refine((b) => (b.image === undefined) !== (b.latent === undefined), {
    message: "give exactly one of image or latent",
    path: ["image"],
  }).refine((b) => b.latent === undefined || (b.width === undefined && b.height === undefined), {
    message: "a latent carries its own size: width and height go with an image",
    path: ["width"],
  }).superRefine(checkSize(limits)).superRefine((body, ctx) => {
    if (body.latent) checkEncodable(ctx, latentPixels(body.latent), body.output_format, "output_format");
  });
}

const endpointSchema = z.union([
  z.object({ prompt: z.string().max(4000), seed: z.number().int().min(0).max(MAX_SEED) }).strict(),
  z.object({ prompt: z.string().max(4000), image: imageField }).strict(),
  z.object({ prompt: z.string().max(4000), latent: latentSchema }).strict(),
], {
  error:
    "must be {prompt, seed}, {prompt, image} or {prompt, latent}: a prompt and exactly one of seed, image or latent",
})
  .describe(
    "a generated image's noise {prompt, seed}, an image to invert {image, prompt}, or {latent, prompt}",
  );

export function interpolateRequestSchema(limits: ImageRouteLimits) {
  return z.object({
    from: endpointSchema,
    to: endpointSchema,
    frames: z.number().int().min(2).max(limits.maxFrames).default(11),
    steps: steps(limits),
    guidance_scale: z.number().min(0).max(50).default(7.5),
    method: z.enum(INVERSION_METHODS).default("ddim").describe("how image endpoints are inverted"),
    animation: z.enum(["none", "webp", "gif"]).default("none"),
    frame_duration_ms: z.number().int().min(10).max(10_000).default(100),
    fit: fitField,
    ...sizeFields,
    output_format: z.enum(OUTPUT_FORMATS).default("png"),
    lora: loraFieldSchema,
  }).strict().superRefine(checkSize(limits)).superRefine((body, ctx) => {
    const latent = "latent" in body.from
      ? body.from.latent
      : "latent" in body.to
      ? body.to.latent
      : undefined;
    if (!latent) return;
    const size = latentPixels(latent);
    checkEncodable(ctx, size, body.output_format, "output_format");
    if (body.animation !== "none") checkEncodable(ctx, size, body.animation, "animation");
  });
}
