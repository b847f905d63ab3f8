/** tools/evaluate.ts: its held-out lists, at a small setting (ISTD only: no Python needed). */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";

const root = new URL("..", import.meta.url).pathname;

async function evaluate(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "tools/evaluate.ts", ...args],
    cwd: root,
    env: { HF_HUB_OFFLINE: "1", HF_ENDPOINT: "http://127.0.0.1:9" },
  }).output();
  const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  return { code, stdout: text(stdout), stderr: text(stderr) };
}

const held = async (file: string): Promise<[string, number][]> =>
  JSON.parse(await Deno.readTextFile(`${root}tests/fixtures/tiny-sd-shapes/${file}`));

Deno.test("evaluate: the second held-out list has its own prompts and seeds, and ISTD runs on either", async () => {
  const [a, b] = [await held("held_out.json"), await held("held_out_b.json")];
  assertEquals(b.length, a.length);
  const seedsA = new Set(a.map(([, seed]) => seed));
  assert(b.every(([, seed]) => !seedsA.has(seed)), "list b reuses a seed of list a");
  assert(b.slice(0, 20).some(([caption], i) => caption !== a[i][0]), "list b's captions are list a's");

  const [onA, onB] = [await istdOf("a"), await istdOf("b")];
  assertEquals([onA.list, onB.list, onB.prompts], ["a", "b", 2]);
  assert(onA.istd_seed_base !== onB.istd_seed_base, "the two lists interpolate between the same noises");
  for (const report of [onA, onB]) assert(report.istd >= 0 && report.mean_adjacent_distance > 0);
  assert(onA.istd !== onB.istd, "the two lists gave the same ISTD");
});

async function istdOf(list: string, ...extra: string[]) {
  const dir = await Deno.makeTempDir({ prefix: "evaluate-" });
  try {
    const run = await evaluate(
      ...["--metrics", "istd", "--list", list, "--prompts", "2", "--steps", "2", "--frames", "3"],
      ...["--json", `${dir}/r.json`, ...extra],
    );
    assertEquals(run.code, 0, run.stderr);
    return JSON.parse(await Deno.readTextFile(`${dir}/r.json`));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("evaluate: --guidance sets the generations' guidance; below 1 it is refused, naming the option", async () => {
  const [guided, unguided] = [await istdOf("a"), await istdOf("a", "--guidance", "1")];
  assertEquals([guided.guidance, unguided.guidance], [7.5, 1]);
  assert(guided.istd !== unguided.istd, "guidance 1 and 7.5 gave the same ISTD");
  const run = await evaluate("--metrics", "istd", "--guidance", "0.5", "--prompts", "1");
  assert(run.code !== 0);
  assert(run.stderr.includes("--guidance 0.5"), run.stderr);
});

Deno.test("evaluate: an unknown list is refused, naming the lists there are", async () => {
  for (const name of ["c", "toString"]) {
    const run = await evaluate("--metrics", "istd", "--list", name, "--prompts", "1");
    assert(run.code !== 0);
    assert(run.stderr.includes(`--list ${name}: known lists are a, b`), run.stderr);
  }
});
