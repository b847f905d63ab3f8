/** The continuous batcher on its own, with a fake model: what it runs together, and what one failure costs. */
import { deepStrictEqual as assertEquals, ok as assert, rejects as assertRejects } from "node:assert/strict";
import * as ort from "onnxruntime-node";
import { Batcher, type BatchOptions, type Feeds } from "../pipeline/batcher.ts";

const OPTIONS: BatchOptions = { maxRows: 64, maxWaitMs: 0, enabled: true };

/** A fake model: y = 2x per row; a row whose data is "bad" fails the whole run, as a packing error would. */
function fakeModel() {
  const runs: { rows: number; rowData: readonly (string | undefined)[] }[] = [];
  const run = (feeds: Feeds, rowData: readonly (string | undefined)[]) => {
    runs.push({ rows: feeds.x.dims[0], rowData });
    if (rowData.includes("bad")) return Promise.reject(new Error("bad row"));
    const x = feeds.x.data as Float32Array;
    return Promise.resolve({ y: new ort.Tensor("float32", x.map((v) => 2 * v), feeds.x.dims) });
  };
  return { runs, run };
}

const rowsOf = (...values: number[]) => ({
  x: new ort.Tensor("float32", Float32Array.from(values), [values.length, 1]),
});
const values = (out: Feeds) => Array.from(out.y.data as Float32Array);

Deno.test("batcher: calls pending together share one run and each gets its own rows; other keys run apart", async () => {
  const model = fakeModel();
  const batcher = new Batcher("fake", model.run, OPTIONS);
  const [a, b, c] = await Promise.all([
    batcher.submit(rowsOf(1, 2), { key: "64" }),
    batcher.submit(rowsOf(3), { key: "64" }),
    batcher.submit(rowsOf(5), { key: "128" }),
  ]);
  assertEquals([values(a), values(b), values(c)], [[2, 4], [6], [10]]);
  assertEquals(model.runs.map((r) => r.rows), [3, 1]);
  assertEquals(batcher.stats, { runs: 2, rows: 4, calls: 3 });
});

Deno.test("batcher: a run never exceeds maxRows unless one call alone does; batching off runs one call per run", async () => {
  const model = fakeModel();
  const small = new Batcher("fake", model.run, { ...OPTIONS, maxRows: 3 });
  await Promise.all([rowsOf(1, 2), rowsOf(3, 4), rowsOf(5), rowsOf(6, 7, 8, 9)].map((f) => small.submit(f)));
  assertEquals(model.runs.map((r) => r.rows), [2, 3, 4]);
  const off = fakeModel();
  const unbatched = new Batcher("fake", off.run, { ...OPTIONS, enabled: false });
  await Promise.all([rowsOf(1), rowsOf(2), rowsOf(3)].map((f) => unbatched.submit(f)));
  assertEquals(off.runs.map((r) => r.rows), [1, 1, 1]);
});

Deno.test("batcher: one call that fails its run fails alone; the others in the run get their rows", async () => {
  const model = fakeModel();
  const batcher = new Batcher("fake", model.run, OPTIONS);
  const results = await Promise.allSettled([
    batcher.submit(rowsOf(1), { rowData: ["good"] }),
    batcher.submit(rowsOf(2), { rowData: ["bad"] }),
    batcher.submit(rowsOf(3, 4), { rowData: ["good", "good"] }),
  ]);
  assertEquals(results.map((r) => r.status), ["fulfilled", "rejected", "fulfilled"]);
  assertEquals(values((results[0] as PromiseFulfilledResult<Feeds>).value), [2]);
  assertEquals(values((results[2] as PromiseFulfilledResult<Feeds>).value), [6, 8]);
  assertEquals(((results[1] as PromiseRejectedResult).reason as Error).message, "bad row");
  // the shared run, then each call alone
  assertEquals(model.runs.map((r) => r.rows), [4, 1, 1, 2]);
});

Deno.test("batcher: an observer that throws does not fail the run it observes", async () => {
  const model = fakeModel();
  const batcher = new Batcher("fake", model.run, OPTIONS);
  const seen: number[] = [];
  batcher.observers.push(() => {
    throw new Error("observer bug");
  }, (rows) => seen.push(rows));
  const quiet = console.error;
  console.error = () => {};
  try {
    assertEquals(values(await batcher.submit(rowsOf(1, 2))), [2, 4]);
  } finally {
    console.error = quiet;
  }
  assertEquals(seen, [2], "the observers after it still hear of the run");
});

Deno.test("batcher: a call aborted while it waits never runs", async () => {
  const model = fakeModel();
  const batcher = new Batcher("fake", model.run, { ...OPTIONS, maxRows: 2, maxWaitMs: 50 });
  const controller = new AbortController();
  const left = batcher.submit(rowsOf(1), { signal: controller.signal });
  controller.abort();
  await assertRejects(left);
  assertEquals(values(await batcher.submit(rowsOf(7))), [14]);
  assert(model.runs.every((r) => r.rows === 1), JSON.stringify(model.runs));
  assertEquals(model.runs.length, 1);
});

Deno.test("batcher: idle() waits for the run in flight", async () => {
  let finish = () => {};
  const slow = (feeds: Feeds) => new Promise<Feeds>((resolve) => finish = () => resolve({ y: feeds.x }));
  const batcher = new Batcher("fake", slow, OPTIONS);
  const call = batcher.submit(rowsOf(1));
  await new Promise((r) => setTimeout(r, 20)); // the run has started
  let idle = false;
  const waiting = batcher.idle().then(() => idle = true);
  await new Promise((r) => setTimeout(r, 20));
  assertEquals(idle, false, "idle while a run executes");
  finish();
  await Promise.all([call, waiting]);
  assertEquals(idle, true);
});

Deno.test("batcher: close() fails the queued calls, lets the run in flight finish, and refuses calls after it", async () => {
  let finish = () => {};
  let runs = 0;
  const slow = (feeds: Feeds) =>
    new Promise<Feeds>((resolve) => {
      runs++;
      finish = () => resolve({ y: feeds.x });
    });
  const batcher = new Batcher("fake", slow, { ...OPTIONS, maxRows: 1 });
  const inFlight = batcher.submit(rowsOf(1));
  await new Promise((r) => setTimeout(r, 20)); // the first run has started
  const queued = batcher.submit(rowsOf(2));
  const reason = new Error("released");
  let closed = false;
  const closing = batcher.close(reason).then(() => closed = true);
  await assertRejects(queued, (e) => e === reason);
  assertEquals(closed, false, "closed while a run executes");
  await assertRejects(batcher.submit(rowsOf(3)), (e) => e === reason);
  finish();
  assertEquals(values(await inFlight), [1]);
  await closing;
  await new Promise((r) => setTimeout(r, 20));
  assertEquals(runs, 1, "a run started after close");
});

/** Two loops of `steps` calls each on their own tracks; `timerTurns` counts timer turns while they run. */
async function twoLoops(batcher: Batcher<string>, steps: number) {
  let timerTurns = 0, running = true;
  const tick = () => {
    if (!running) return;
    timerTurns++;
    setTimeout(tick, 0);
  };
  setTimeout(tick, 0);
  const loop = async (start: number) => {
    const track = batcher.openTrack();
    try {
      let x = start;
      for (let i = 0; i < steps; i++) x = values(await batcher.submit(rowsOf(x), { track }))[0];
      return x;
    } finally {
      track.close();
    }
  };
  const results = await Promise.all([loop(1), loop(3)]);
  running = false;
  return { results, timerTurns };
}

Deno.test("batcher: loops on tracks run back to back (no timer turn between runs) and share every run", async () => {
  const model = fakeModel();
  const batcher = new Batcher<string>("fake", model.run, OPTIONS);
  const { results, timerTurns } = await twoLoops(batcher, 50);
  assertEquals(results, [2 ** 50, 3 * 2 ** 50]);
  assertEquals(model.runs.map((r) => r.rows), new Array(50).fill(2), "both loops in every run");
  assert(timerTurns <= 1, `${timerTurns} timer turns passed during 50 runs`);
});

const microtasks = async (n: number) => {
  for (let i = 0; i < n; i++) await Promise.resolve();
};

Deno.test("batcher: a run waits for every open track's call, at most one timer turn; a closed track holds nothing", async () => {
  const model = fakeModel();
  const batcher = new Batcher<string>("fake", model.run, OPTIONS);
  const a = batcher.openTrack(), b = batcher.openTrack();
  let turned = false;
  setTimeout(() => turned = true, 0);
  const first = batcher.submit(rowsOf(1), { track: a });
  await microtasks(20);
  assertEquals(model.runs.length, 0, "b has not queued its call yet");
  const second = batcher.submit(rowsOf(2), { track: b });
  await microtasks(20);
  assertEquals([model.runs.map((r) => r.rows), turned], [[2], false], "with both queued it ran at once");
  assertEquals([values(await first), values(await second)], [[2], [4]]);

  // b never submits again: a's next call runs after one timer turn, not never
  const alone = await batcher.submit(rowsOf(3), { track: a });
  assertEquals([values(alone), model.runs.length], [[6], 2]);
  b.close();
  turned = false;
  setTimeout(() => turned = true, 0);
  const next = batcher.submit(rowsOf(4), { track: a });
  await microtasks(20);
  assertEquals([model.runs.length, turned], [3, false], "with b closed, a alone runs at once");
  assertEquals(values(await next), [8]);
  a.close();
});
