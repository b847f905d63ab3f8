/**
 * Resource safety: what a model run costs is measured at start, batches are formed within a memory
 * budget, a request whose one run could never fit is refused before any work, and memory comes back.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { post, withServer } from "./helpers.ts";
import { measurePeak, residentBytes, runBytes } from "../pipeline/cost.ts";
import { runTooLarge } from "../pipeline/cost.ts";

const MIB = 2 ** 20;
const PROMPT = "a large red circle on a blue background";

Deno.test("memory: a request whose one model run cannot fit the budget gets 400 naming the field, before any work", async () => {
  await withServer({ MEMORY_BUDGET_BYTES: String(64 * MIB) }, async ({ url, engine }) => {
    const info = (await (await fetch(`${url}/v1/models`)).json()).data[0];
    assertEquals([info.memory.budget_bytes, info.memory.enforced], [64 * MIB, true]);
    const calls = engine.state.batches.unet.calls + engine.state.batches.textEncoder.calls;
    const refused = async (path: string, body: unknown, field: string) => {
      const res = await post(`${url}${path}`, body);
      const json = await res.json();
      assertEquals(
        [res.status, json.error.code, json.error.field],
        [400, "limit_exceeded", field],
        JSON.stringify(json),
      );
      assert(/memory budget is 0\.06 GiB/.test(json.error.message), json.error.message);
    };
    await refused("/generate", { prompt: PROMPT, width: 1024, height: 1024, steps: 1 }, "width");
    await refused("/generate", { prompt: PROMPT, width: 256, height: 512, steps: 1 }, "height");
    // one image of this size fits, eight in one run do not
    const fitsAlone = [64, 128, 192, 256].filter((side) => !runTooLarge(engine.info.memory, side, side, 2, 1))
      .pop()!;
    assert(
      runTooLarge(engine.info.memory, fitsAlone, fitsAlone, 16, 8),
      "eight images of the largest size that fits alone do not",
    );
    await refused("/generate", {
      prompt: PROMPT,
      width: fitsAlone,
      height: fitsAlone,
      num_images: 8,
      steps: 1,
    }, "num_images");
    await refused("/interpolate", {
      from: { prompt: PROMPT, seed: 1 },
      to: { prompt: PROMPT, seed: 2 },
      width: 1024,
      height: 1024,
      steps: 1,
    }, "width");
    const bigLatent = {
      shape: [1, 4, 128, 128],
      dtype: "float32",
      data: btoa("\0".repeat(4 * 4 * 128 * 128)),
    };
    await refused("/edit", { latent: bigLatent, source_prompt: "a", target_prompt: "b", steps: 1 }, "latent");
    assertEquals(
      engine.state.batches.unet.calls + engine.state.batches.textEncoder.calls,
      calls,
      "no model work",
    );
    const ok = await post(`${url}/generate`, { prompt: PROMPT, steps: 2 });
    assertEquals(ok.status, 200, "requests that fit are served");
  });
});

Deno.test("memory: a run is never formed over the budget; concurrent requests that fit alone run apart", async () => {
  // the costs this model measures at start, to set a budget that holds two guided rows at 256x256, not four
  const costs = await withServer({}, ({ engine }) => Promise.resolve(engine.info.memory.costs!));
  const positions = 32 * 32;
  const budget = Math.round(runBytes(costs.unet!, 3, positions));
  await withServer({ MEMORY_BUDGET_BYTES: String(budget) }, async ({ url, engine }) => {
    const c = engine.info.memory.costs!.unet!;
    assert(runBytes(c, 2, positions) <= engine.info.memory.budgetBytes, "one guided image fits");
    assert(runBytes(c, 4, positions) > engine.info.memory.budgetBytes, "two do not");
    const rows: number[] = [];
    engine.runListeners.add((r) => rows.push(r));
    const replies = await Promise.all(
      [1, 2, 3].map((seed) =>
        post(`${url}/generate`, { prompt: PROMPT, width: 256, height: 256, steps: 3, seed })
      ),
    );
    assertEquals(replies.map((r) => r.status), [200, 200, 200]);
    await Promise.all(replies.map((r) => r.arrayBuffer()));
    assertEquals(rows.length, 9, `three requests' 3 steps each ran in runs of ${rows}`);
    assert(rows.every((r) => r === 2), `runs of ${rows} rows`);
  });
});

Deno.test("memory: the heaviest request the budget admits peaks within it, and resident memory comes back", async () => {
  const budget = 512 * MIB;
  await withServer({ MEMORY_BUDGET_BYTES: String(budget) }, async ({ url, engine }) => {
    // the largest square image at the default guidance that the budget admits
    let side = 64;
    while (side + 64 <= 1024 && !runTooLarge(engine.info.memory, side + 64, side + 64, 2, 1)) side += 64;
    // Resident memory is the whole test process's: the JavaScript garbage of earlier test files is
    // collected first (`deno task test` runs with --expose-gc), and a small request warms this one up.
    await (await post(`${url}/generate`, { prompt: PROMPT, steps: 1 })).arrayBuffer();
    const collect = (globalThis as { gc?: () => void }).gc ?? (() => {});
    collect();
    const before = residentBytes();
    const peak = await measurePeak(async () => {
      const res = await post(`${url}/generate`, {
        prompt: PROMPT,
        width: side,
        height: side,
        steps: 1,
        seed: 5,
      });
      assertEquals(res.status, 200);
      await res.arrayBuffer();
    });
    collect();
    const after = residentBytes();
    console.log(
      `heaviest admitted: ${side}x${side}, guidance 7.5: peak +${Math.round(peak! / MIB)} MiB (budget ${
        budget / MIB
      }); ` +
        `resident ${Math.round(before / MIB)} -> ${Math.round(after / MIB)} MiB`,
    );
    assert(side >= 256, `the budget admits only ${side}x${side}`);
    assert(peak! <= budget, `peak ${peak} over the budget ${budget}`);
    assert(after - before < 64 * MIB, `resident memory grew by ${Math.round((after - before) / MIB)} MiB`);
    const refused = await post(`${url}/generate`, {
      prompt: PROMPT,
      width: side + 64,
      height: side + 64,
      steps: 1,
    });
    assertEquals(refused.status, 400, "one size up is refused");
  });
});

Deno.test("memory: at the default budget, the heaviest request the default caps admit peaks within it", async () => {
  await withServer({}, async ({ url, engine }) => {
    const budget = engine.info.memory.budgetBytes;
    // the most expensive one-step /generate the validation admits: size x images x guidance
    let heaviest: { side: number; images: number; guidance: number; bytes: number } | undefined;
    for (let side = 64; side <= 1024; side += 64) {
      for (const guidance of [1, 7.5]) {
        for (let images = 1; images <= 8 && side * side * images <= 1024 * 1024; images++) {
          const rows = guidance === 1 ? images : 2 * images;
          if (runTooLarge(engine.info.memory, side, side, rows, images)) continue;
          const bytes = runBytes(engine.info.memory.costs!.unet!, rows, (side / 8) ** 2);
          if (!heaviest || bytes > heaviest.bytes) heaviest = { side, images, guidance, bytes };
        }
      }
    }
    const { side, images, guidance } = heaviest!;
    const peak = await measurePeak(async () => {
      const res = await post(`${url}/generate`, {
        prompt: PROMPT,
        width: side,
        height: side,
        num_images: images,
        guidance_scale: guidance,
        steps: 1,
      });
      assertEquals(res.status, 200);
      await res.arrayBuffer();
    });
    console.log(
      `default budget ${
        Math.round(budget / MIB)
      } MiB; heaviest admitted: ${images} x ${side}x${side} at guidance ` +
        `${guidance} (estimated ${Math.round(heaviest!.bytes / MIB)} MiB): peak +${
          Math.round(peak! / MIB)
        } MiB`,
    );
    assert(peak! <= budget, `peak ${peak} over the budget ${budget}`);
  });
});
