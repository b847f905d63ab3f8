/** tools/figure.ts, the README's interpolation figure, runs on a small setting and draws what it says. */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import sharp from "sharp";
import { layout } from "../tools/figure.ts";

Deno.test("figure: base and Smooth-LoRA strips with their distance plots, a PNG of the layout's size and its JSON", async () => {
  const dir = await Deno.makeTempDir({ prefix: "figure-" });
  try {
    const frames = 3, upscale = 2, size = 64;
    const { code, stderr } = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "tools/figure.ts",
        "--prompts",
        "1",
        "--frames",
        `${frames}`,
        "--steps",
        "2",
        "--out",
        `${dir}/f.png`,
      ],
      cwd: new URL("..", import.meta.url).pathname,
      // the adapter comes from the bundled Hub cache: nothing reaches the network
      env: { HF_HUB_OFFLINE: "1", HF_ENDPOINT: "http://127.0.0.1:9" },
      stdout: "null",
    }).output();
    assertEquals(code, 0, new TextDecoder().decode(stderr));

    const cell = size * upscale, at = layout(1, frames, cell);
    const { data, info } = await sharp(await Deno.readFile(`${dir}/f.png`)).removeAlpha().raw()
      .toBuffer({ resolveWithObject: true });
    assertEquals([info.width, info.height], [at.width, at.height]);
    assert(at.width > frames * cell && at.height > 2 * cell);

    const report = JSON.parse(await Deno.readTextFile(`${dir}/f.json`));
    assertEquals(report.prompts.length, 1);
    assertEquals(report.frames, frames);
    for (const key of ["base", "lora"]) {
      assertEquals(report.prompts[0][key].distances.length, frames - 1);
      assert(report.prompts[0][key].istd >= 0);
    }
    assert(report.adapter.startsWith("smooth-diffusion/tiny-sd-shapes-smooth-lora@"), report.adapter);
    assertEquals(report.base.istd, report.prompts[0].base.istd);

    // the strips are where the layout puts them (upscaled: each frame pixel is a 2x2 block) and differ
    const stripPixels = (top: number) => {
      const rows = [];
      for (let y = top; y < top + cell; y++) {
        const start = (y * info.width + at.left) * 3;
        rows.push(data.subarray(start, start + frames * cell * 3));
      }
      return rows;
    };
    const [base, lora] = [stripPixels(at.stripTop(0, 0)), stripPixels(at.stripTop(0, 1))];
    const px = (rows: Uint8Array[], x: number, y: number) => Array.from(rows[y].subarray(x * 3, x * 3 + 3));
    assertEquals(px(base, 10, 20), px(base, 11, 21));
    let differing = 0;
    base.forEach((row, y) => row.forEach((v, i) => differing += Number(v !== lora[y][i])));
    assert(
      differing > 0.1 * frames * cell * cell * 3,
      `the adapter changes the frames: ${differing} bytes differ`,
    );
    assert(
      report.prompts[0].base.distances.some((d: number, k: number) =>
        d !== report.prompts[0].lora.distances[k]
      ),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
