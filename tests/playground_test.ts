/// <reference lib="dom" />
/**
 * The playground page at `/`, in a real headless browser: Debian's `chromium` driven by
 * `puppeteer-core`. The page is used as a person would (typing, clicking, uploading a file), against
 * the running server over the embedded model; what it shows is read back from the browser (image
 * sizes and pixels, the plot's points, the ISTD text) and checked against what the API returned, and
 * screenshots are checked for content and written to a temporary directory (printed).
 *
 * Where chromium is missing the tests are ignored with the reason printed; under `CI=true` they run
 * and fail with it instead (`.ci/run` installs chromium).
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import puppeteer, { type Browser, type HTTPResponse, type Page } from "puppeteer-core";
import sharp from "sharp";
import { post, withServer } from "./helpers.ts";

const CHROMIUM = Deno.env.get("CHROMIUM_PATH") ?? "/usr/bin/chromium";
const missing = (() => {
  try {
    return Deno.statSync(CHROMIUM).isFile ? undefined : `${CHROMIUM} is not a file`;
  } catch {
    return `no chromium at ${CHROMIUM}`;
  }
})();
const inCI = Deno.env.get("CI") === "true";
if (missing && !inCI) {
  console.log(
    `playground_test: ignored, ${missing} (apt-get install chromium, as .ci/run does, or set CHROMIUM_PATH); ` +
      "under CI=true this fails.",
  );
}

function browserTest(name: string, fn: () => Promise<void>) {
  Deno.test({
    name,
    ignore: missing !== undefined && !inCI,
    // puppeteer keeps its own timers and sockets past close; the server's are checked elsewhere
    sanitizeOps: false,
    sanitizeResources: false,
    fn: async () => {
      if (missing) throw new Error(`CI=true and ${missing}: .ci/run installs Debian's chromium`);
      await fn();
    },
  });
}

const STEPS = 4;
const SMOOTH = "smooth-diffusion/tiny-sd-shapes-smooth-lora";
/** The shipped adapters from models/hub-cache only: port 9 on loopback refuses any hub call. */
const OFFLINE = { HF_ENDPOINT: "http://127.0.0.1:9", HF_HUB_OFFLINE: "1" };
const TIMEOUT_MS = 60_000;

/** A browser page that records console errors, page errors and failed or refused requests. */
async function openBrowser(): Promise<{ browser: Browser; page: Page; problems: string[] }> {
  const browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--headless=new", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 1000 });
  page.setDefaultTimeout(TIMEOUT_MS);
  const problems: string[] = [];
  page.on("console", (m) => {
    if (["error", "warn", "warning"].includes(m.type())) problems.push(`console ${m.type()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`page error: ${(e as Error).message ?? e}`));
  page.on("requestfailed", (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
  page.on("response", (r) => {
    if (r.status() >= 400) problems.push(`HTTP ${r.status()}: ${r.request().method()} ${r.url()}`);
  });
  return { browser, page, problems };
}

/** Clears an input and types `text` into it. */
async function fill(page: Page, selector: string, text: string) {
  await page.$eval(selector, (el) => ((el as HTMLInputElement).value = ""));
  await page.type(selector, text);
}

/** The response to the next `method path` the page sends, once it has arrived. */
function nextResponse(page: Page, method: string, path: string): Promise<HTTPResponse> {
  return page.waitForResponse(
    (r) => r.request().method() === method && new URL(r.url()).pathname === path,
    { timeout: TIMEOUT_MS },
  );
}

/** The <img>'s natural size and its pixels, drawn on a canvas in the page, as RGB. */
function imagePixels(page: Page, selector: string) {
  return page.$eval(selector, (el) => {
    const img = el as HTMLImageElement;
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const ctx = canvas.getContext("2d")!;
    ctx.drawImage(img, 0, 0);
    const rgba = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    const rgb: number[] = [];
    for (let i = 0; i < rgba.length; i += 4) rgb.push(rgba[i], rgba[i + 1], rgba[i + 2]);
    return { width: img.naturalWidth, height: img.naturalHeight, complete: img.complete, rgb };
  });
}

/** The raw RGB of base64 PNG bytes, decoded by sharp (the page's pixels must be these). */
async function rgbOf(b64: string): Promise<number[]> {
  const bytes = Uint8Array.fromBase64(b64);
  return Array.from(new Uint8Array(await sharp(bytes).removeAlpha().raw().toBuffer()));
}

function variance(values: ArrayLike<number>): number {
  let sum = 0, squares = 0;
  for (let i = 0; i < values.length; i++) [sum, squares] = [sum + values[i], squares + values[i] * values[i]];
  const mean = sum / values.length;
  return squares / values.length - mean * mean;
}

/**
 * A screenshot of one element, written to `dir/name.png`; returns the luminance variance of its pixels,
 * which is near 0 for a blank (one-colour) region.
 */
async function screenshot(page: Page, selector: string, dir: string, name: string): Promise<number> {
  const element = await page.$(selector);
  assert(element, `${selector} is on the page`);
  const path = `${dir}/${name}.png`;
  await element.screenshot({ path });
  const { data, info } = await sharp(path).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  const luminance = new Float64Array(info.width * info.height);
  for (let i = 0; i < luminance.length; i++) {
    luminance[i] = 0.299 * data[3 * i] + 0.587 * data[3 * i + 1] + 0.114 * data[3 * i + 2];
  }
  return variance(luminance);
}

/** A 96x80 PNG to upload: a yellow disc on a purple ground (not the model's size: the server fits it). */
async function uploadImage(path: string) {
  const width = 96, height = 80, rgb = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const inside = (x - 48) ** 2 + (y - 40) ** 2 < 26 ** 2;
      rgb.set(inside ? [235, 200, 40] : [90, 40, 150], 3 * (y * width + x));
    }
  }
  await sharp(rgb, { raw: { width, height, channels: 3 } }).png().toFile(path);
}

browserTest(
  "playground: generate with live progress and an adapter, interpolate with the plot, upload, invert and edit; no console errors; screenshots",
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "playground-" });
    await withServer(OFFLINE, async ({ url }) => {
      const { browser, page, problems } = await openBrowser();
      try {
        // The page loads, with nothing fetched from anywhere but this server.
        const origins = new Set<string>();
        page.on("request", (r) => void origins.add(new URL(r.url()).origin));
        const loaded = await page.goto(`${url}/`, { waitUntil: "networkidle0" });
        assertEquals(loaded?.status(), 200);
        assert(loaded!.headers()["content-type"].startsWith("text/html"));
        await page.waitForFunction(() =>
          document.getElementById("model-info")!.textContent!.includes("64x64")
        );
        for (const origin of origins) assert(origin === url || origin === "null", `fetched from ${origin}`);

        // ---- generate: the typed Hub repo id, live progress, the image
        await fill(page, "#gen-prompt", "a large red circle on a blue background");
        await fill(page, "#gen-seed", "7");
        await fill(page, "#gen-steps", String(STEPS));
        await fill(page, "#gen-guidance", "7.5");
        await fill(page, "#adapter-repo", SMOOTH);
        // every value the status takes, as the events arrive: each assignment of textContent adds a
        // new text node, read from the mutation records (one observer call can carry several, when
        // two events arrive in one chunk, so the element's current text would miss the earlier ones)
        await page.evaluate(() => {
          const seen: string[] = [];
          (globalThis as any).progressSeen = seen;
          new MutationObserver((records) => {
            for (const record of records) {
              for (const node of record.addedNodes) seen.push(node.textContent!);
            }
          }).observe(document.getElementById("gen-status")!, { childList: true });
        });
        const generated = nextResponse(page, "POST", "/generate");
        await page.click("#gen-run");
        const response = await generated;
        assertEquals(response.status(), 200);
        assert(response.headers()["content-type"].startsWith("text/event-stream"));
        await page.waitForFunction(() =>
          document.getElementById("gen-status")!.textContent!.startsWith("done")
        );
        const steps: string[] = await page.evaluate(() => (globalThis as any).progressSeen);
        assertEquals(
          steps.filter((s) => s.startsWith("step ")),
          Array.from({ length: STEPS }, (_, i) => `step ${i + 1} / ${STEPS}`),
          "the status shows each progress event",
        );
        assertEquals(
          await page.$eval(
            "#gen-progress",
            (p) => [(p as HTMLProgressElement).value, (p as HTMLProgressElement).max],
          ),
          [STEPS, STEPS],
        );

        // The same request through the API: the page shows exactly its image (the request is deterministic).
        const api = await (await post(`${url}/generate`, {
          prompt: "a large red circle on a blue background",
          seed: 7,
          steps: STEPS,
          guidance_scale: 7.5,
          lora: { repo: SMOOTH, scale: 1 },
        })).json();
        const shown = await imagePixels(page, "#gen-image");
        assertEquals([shown.complete, shown.width, shown.height], [true, 64, 64]);
        assertEquals(shown.rgb, await rgbOf(api.images[0].data), "the page's image is the API's image");
        assert(variance(shown.rgb) > 100, "the generated image is not flat");
        const meta = await page.$eval("#gen-meta", (e) => e.textContent!);
        assert(meta.includes("seed 7") && meta.includes(SMOOTH), meta);

        // The adapter it loaded is now offered in the picker of cached adapters; pick it instead of typing.
        await page.waitForFunction(
          (repo) =>
            [...document.querySelectorAll("#adapter-cached option")].some((o) =>
              o.textContent!.startsWith(repo)
            ),
          {},
          SMOOTH,
        );
        const option = await page.$$eval(
          "#adapter-cached option",
          (options, repo) =>
            options.find((o) => o.textContent!.startsWith(repo as string))!.getAttribute("value"),
          SMOOTH,
        );
        await page.select("#adapter-cached", option!);
        await fill(page, "#adapter-repo", "");
        const second = nextResponse(page, "POST", "/generate");
        await page.click("#gen-run");
        const secondBody = (await second).request().postData()!;
        assertEquals(JSON.parse(secondBody).lora.repo, SMOOTH);
        await page.waitForFunction(() =>
          document.getElementById("gen-status")!.textContent!.startsWith("done")
        );
        assertEquals(
          (await imagePixels(page, "#gen-image")).rgb,
          shown.rgb,
          "the cached pick is the same adapter",
        );
        await page.select("#adapter-cached", "");

        const generateVariance = await screenshot(page, "#generate-card", dir, "generate");
        const imageVariance = await screenshot(page, "#gen-image", dir, "generate-image");
        assert(imageVariance > 100, `the generated image's screenshot is blank (variance ${imageVariance})`);
        assert(generateVariance > 100);

        // ---- interpolate: the strip, 10 points on the plot, the ISTD as /interpolate returned it
        await fill(page, "#interp-from-prompt", "a large red circle on a blue background");
        await fill(page, "#interp-from-seed", "1");
        await fill(page, "#interp-to-prompt", "a small green square on a yellow background");
        await fill(page, "#interp-to-seed", "2");
        await fill(page, "#interp-frames", "11");
        await fill(page, "#interp-steps", String(STEPS));
        const interpolated = nextResponse(page, "POST", "/interpolate");
        await page.click("#interp-run");
        const interpolation = await (await interpolated).json();
        await page.waitForFunction(() => !document.getElementById("interp-istd-line")!.hidden);
        assertEquals(interpolation.frames.length, 11);
        assertEquals(interpolation.distances.length, 10);
        const frames = await page.$$eval(
          "#interp-strip img",
          (imgs) =>
            imgs.map((i) => [(i as HTMLImageElement).naturalWidth, (i as HTMLImageElement).naturalHeight]),
        );
        assertEquals(frames, Array(11).fill([64, 64]));
        const firstFrame = await imagePixels(page, "#interp-strip img:first-child");
        assertEquals(firstFrame.rgb, await rgbOf(interpolation.frames[0].data));
        const points = await page.$$eval("#interp-plot circle.dist-pt", (cs) =>
          cs.map((c) => ({
            value: Number(c.getAttribute("data-value")),
            cx: Number(c.getAttribute("cx")),
            cy: Number(c.getAttribute("cy")),
          })));
        assertEquals(points.length, 10);
        assertEquals(points.map((p) => p.value), interpolation.distances);
        // drawn left to right, and higher on the canvas (smaller y) for larger distances
        for (let i = 1; i < points.length; i++) assert(points[i].cx > points[i - 1].cx);
        const byValue = [...points].sort((a, b) => a.value - b.value);
        for (let i = 1; i < byValue.length; i++) assert(byValue[i].cy <= byValue[i - 1].cy + 1e-9);
        assertEquals(await page.$eval("#interp-istd", (e) => e.textContent), String(interpolation.istd));
        assert(interpolation.istd > 0);
        const plotVariance = await screenshot(page, "#interp-card", dir, "interpolate");
        assert(plotVariance > 100, `the interpolation view's screenshot is blank (variance ${plotVariance})`);

        // ---- upload an image, invert it, edit it from the latent /invert returned
        const upload = `${dir}/upload.png`;
        await uploadImage(upload);
        const input = await page.$("#edit-file");
        await (input as any).uploadFile(upload);
        await page.waitForFunction(() =>
          (document.getElementById("edit-source") as HTMLImageElement).naturalWidth > 0
        );
        const uploaded = await imagePixels(page, "#edit-source");
        assertEquals([uploaded.width, uploaded.height], [96, 80]);
        await fill(page, "#invert-prompt", "a yellow circle on a purple background");
        await fill(page, "#invert-steps", String(STEPS));
        const invertedResponse = nextResponse(page, "POST", "/invert");
        await page.click("#invert-run");
        const inverted = await (await invertedResponse).json();
        const invertRequest = JSON.parse((await (await invertedResponse).request().postData())!);
        assert(invertRequest.image.startsWith("data:image/png;base64,"), "the upload is sent as a data URL");
        await page.waitForFunction(() =>
          !(document.getElementById("edit-run") as HTMLButtonElement).disabled
        );
        const reconstruction = await imagePixels(page, "#invert-recon");
        assertEquals(reconstruction.rgb, await rgbOf(inverted.reconstruction.data));
        assert(inverted.metrics.psnr > 10, `reconstruction PSNR ${inverted.metrics.psnr}`);

        await fill(page, "#edit-target", "a green circle on a purple background");
        const editedResponse = nextResponse(page, "POST", "/edit");
        await page.click("#edit-run");
        const edited = await (await editedResponse).json();
        const editRequest = JSON.parse((await (await editedResponse).request().postData())!);
        assertEquals(editRequest.latent, inverted.latent, "the edit starts from the latent /invert returned");
        assertEquals(editRequest.source_prompt, "a yellow circle on a purple background");
        assertEquals(editRequest.image, undefined);
        await page.waitForFunction(() =>
          document.getElementById("edit-status")!.textContent!.startsWith("done")
        );
        const editShown = await imagePixels(page, "#edit-image");
        assertEquals([editShown.width, editShown.height], [64, 64]);
        assertEquals(editShown.rgb, await rgbOf(edited.images[0].data));
        assert(variance(editShown.rgb) > 100, "the edited image is not flat");
        const editVariance = await screenshot(page, "#edit-card", dir, "edit");
        assert(editVariance > 100, `the edit view's screenshot is blank (variance ${editVariance})`);

        await page.screenshot({ path: `${dir}/page.png`, fullPage: true });
        assertEquals(
          await page.$$eval(".error", (es) => es.map((e) => e.textContent).filter(Boolean)),
          [],
          "no error shown",
        );
        assertEquals(problems, [], "no console errors, failed requests or error responses");
        console.log(`playground_test: screenshots in ${dir}`);
      } finally {
        await browser.close();
      }
    });
  },
);

browserTest(
  "playground: with API keys the page still loads, asks for the key and sends it as a Bearer token; /docs works",
  async () => {
    await withServer({ API_KEYS: "sekrit-key" }, async ({ url }) => {
      const { browser, page, problems } = await openBrowser();
      try {
        const loaded = await page.goto(`${url}/`, { waitUntil: "networkidle0" });
        assertEquals(loaded?.status(), 200);
        // without the key the API refuses, and the page says why
        await page.waitForFunction(() =>
          document.getElementById("settings-error")!.textContent!.includes("API key")
        );
        assertEquals(problems.filter((p) => !p.includes("401")), [], "only the 401 of the unkeyed call");
        problems.length = 0;

        await page.type("#api-key", "sekrit-key");
        await page.click("#remember-key");
        await page.click("#refresh-models");
        await page.waitForFunction(() =>
          document.getElementById("model-info")!.textContent!.includes("64x64")
        );
        await fill(page, "#gen-seed", "3");
        await fill(page, "#gen-steps", "2");
        const generated = nextResponse(page, "POST", "/generate");
        await page.click("#gen-run");
        const response = await generated;
        assertEquals(response.request().headers()["authorization"], "Bearer sekrit-key");
        await page.waitForFunction(() =>
          document.getElementById("gen-status")!.textContent!.startsWith("done")
        );
        assertEquals((await imagePixels(page, "#gen-image")).width, 64);
        assertEquals(
          await page.evaluate(() => localStorage.getItem("smooth-diffusion.api-key")),
          "sekrit-key",
        );

        // a reload keeps the remembered key and needs no typing
        problems.length = 0;
        await page.reload({ waitUntil: "networkidle0" });
        await page.waitForFunction(() =>
          document.getElementById("model-info")!.textContent!.includes("64x64")
        );
        assertEquals(problems, [], "no console errors or failed requests once the key is known");

        // Stop: the page drops the stream (the server then cancels the steps left) and is ready again
        await fill(page, "#gen-steps", "150");
        await page.click("#gen-run");
        await page.waitForFunction(() =>
          document.getElementById("gen-status")!.textContent!.startsWith("step ")
        );
        await page.click("#gen-stop");
        await page.waitForFunction(() => document.getElementById("gen-status")!.textContent === "stopped");
        assertEquals(await page.$eval("#gen-run", (b) => (b as HTMLButtonElement).disabled), false);
        assertEquals(await page.$eval("#gen-error", (e) => e.textContent), "");
        assertEquals(
          (problems as string[]).filter((p) => !(p.startsWith("request failed") && p.includes("/generate"))),
          [],
          "only the stopped request",
        );
      } finally {
        await browser.close();
      }
      // the API reference page is unchanged
      const docs = await fetch(`${url}/docs`, { headers: { authorization: "Bearer sekrit-key" } });
      assertEquals(docs.status, 200);
      assert((await docs.text()).includes("/generate"));
    });
  },
);
