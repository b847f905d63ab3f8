/** LoRA adapters through the API, fetched by the real @huggingface/hub client from a loopback hub. */
import {
  deepStrictEqual as assertEquals,
  notDeepStrictEqual as assertNotEquals,
  ok as assert,
} from "node:assert/strict";
import { FakeHub } from "../support/hub_server.ts";
import { MODEL_DIR, pixels, post, withServer } from "./helpers.ts";
import type { RunningServer } from "../server.ts";
import { findLoraTargets } from "../loras/graph_rewrite.ts";
import { randomAdapter } from "../support/random_adapter.ts";

const targets = findLoraTargets(await Deno.readFile(`${MODEL_DIR}/unet/model.onnx`));
const fileA = randomAdapter(targets, { seed: 100, rank: 4, format: "legacy-attention-processor" });
const fileB = randomAdapter(targets, { seed: 300, rank: 2, format: "diffusers-peft", alpha: 2 });
const PROMPT = "a large yellow square on a purple background";

async function withHub<T>(fn: (hub: FakeHub, env: Record<string, string>) => Promise<T>): Promise<T> {
  const hub = new FakeHub();
  const cache = await Deno.makeTempDir();
  try {
    return await fn(hub, { HF_ENDPOINT: hub.url, HF_HUB_CACHE: cache, LORA_BUNDLED_CACHE: "" });
  } finally {
    await hub.close();
    await Deno.remove(cache, { recursive: true });
  }
}

const generate = async (url: string, lora?: unknown, extra: Record<string, unknown> = {}) => {
  const res = await post(`${url}/generate`, {
    prompt: PROMPT,
    seed: 4,
    steps: 6,
    ...(lora ? { lora } : {}),
    ...extra,
  });
  return { status: res.status, json: await res.json() };
};

Deno.test("adapters: public repo, resolved commit reported, image changes; a warm adapter needs no hub call", async () => {
  await withHub(async (hub, env) => {
    const commit = await hub.addCommit("acme/style-lora", {
      "pytorch_lora_weights.safetensors": fileA,
      "README.md": new Uint8Array(3),
    });
    await withServer(env, async ({ url, engine }) => {
      const base = await generate(url);
      const first = await generate(url, { repo: "acme/style-lora" });
      assertEquals(first.status, 200, JSON.stringify(first.json));
      assertEquals(first.json.parameters.lora, [{
        repo: "acme/style-lora",
        file: "pytorch_lora_weights.safetensors",
        revision: "main",
        commit,
        scale: 1,
        format: "legacy-attention-processor",
        applied_modules: targets.length,
      }]);
      assertNotEquals(first.json.images[0].data, base.json.images[0].data);
      const hubCalls = hub.requests.length;
      const warm = await generate(url, { repo: "acme/style-lora", scale: 1 });
      assertEquals(warm.json.images[0].data, first.json.images[0].data);
      assertEquals(hub.requests.length, hubCalls, "a warm adapter is served from memory");
      const models = await (await fetch(`${url}/v1/models`)).json();
      assertEquals(models.data[0].adapters.map((a: any) => [a.repo, a.commit, a.in_use]), [[
        "acme/style-lora",
        commit,
        0,
      ]]);
      assertEquals(engine.state.adapters.downloads, 1);
    });
  });
});

Deno.test("adapters: concurrent requests share one download; different adapters share UNet runs", async () => {
  await withHub(async (hub, env) => {
    await hub.addCommit("acme/a", { "a.safetensors": fileA });
    await hub.addCommit("acme/b", { "b.safetensors": fileB });
    await withServer(env, async ({ url, engine }) => {
      const specs = [undefined, { repo: "acme/a" }, { repo: "acme/b", scale: 0.5 }, [{ repo: "acme/a" }, {
        repo: "acme/b",
        scale: 0.5,
      }]];
      const before = { ...engine.state.batches.unet };
      const together = await Promise.all(
        [...specs, { repo: "acme/a" }, { repo: "acme/a" }].map((s) => generate(url, s)),
      );
      assertEquals(together.map((r) => r.status), [200, 200, 200, 200, 200, 200]);
      assertEquals(engine.state.adapters.downloads, 2, "one download per adapter, whatever the concurrency");
      const runs = engine.state.batches.unet.runs - before.runs;
      assert(runs < 6 * 6, `six requests of 6 steps with mixed adapters took ${runs} runs`);
      for (let i = 0; i < specs.length; i++) {
        const alone = await generate(url, specs[i]);
        const [a, b] = [
          await pixels(alone.json.images[0].data),
          await pixels(together[i].json.images[0].data),
        ];
        assert(a.every((v, j) => Math.abs(v - b[j]) <= 2), `request ${i} differs between batched and alone`);
      }
    });
  });
});

Deno.test("adapters: one adapter loaded at once under several names (branch and commit, file named and not) is downloaded, counted and pinned once", async () => {
  const repos = ["acme/r0", "acme/r1", "acme/r2"];
  // Each adapter's names race: all of its requests load it at the same time.
  const names = (commits: string[]) =>
    repos.flatMap((repo, i) => [
      { repo },
      { repo, revision: commits[i] },
      { repo, file: "a.safetensors" },
      { repo, revision: commits[i], file: "a.safetensors" },
    ]);
  const check = async (url: string, engine: RunningServer["engine"], specs: unknown[]) => {
    const results = await Promise.all(specs.map((lora) => generate(url, lora)));
    assertEquals(
      results.map((r) => r.status),
      specs.map(() => 200),
      JSON.stringify(results.map((r) => r.json.error)),
    );
    const loaded = engine.state.loadedAdapters;
    assertEquals(loaded.map((a) => [a.repo, a.in_use]).sort(), repos.map((repo) => [repo, 0]));
    assertEquals(
      engine.state.adapters.bytes,
      loaded.reduce((n, a) => n + a.bytes, 0),
      "each adapter's bytes counted once",
    );
  };
  // From the hub: one download per file.
  await withHub(async (hub, env) => {
    const commits = await Promise.all(repos.map((repo) => hub.addCommit(repo, { "a.safetensors": fileA })));
    await withServer(env, async ({ url, engine }) => {
      await check(url, engine, names(commits));
      assertEquals(engine.state.adapters.downloads, repos.length);
    });
  });
  // From a local Hub cache: no download to share, only the read.
  const cache = await Deno.makeTempDir();
  try {
    const commits = repos.map((_, i) => String(i).repeat(40));
    for (const [i, repo] of repos.entries()) {
      const root = `${cache}/models--${repo.replace("/", "--")}`;
      await Deno.mkdir(`${root}/refs`, { recursive: true });
      await Deno.mkdir(`${root}/snapshots/${commits[i]}`, { recursive: true });
      await Deno.writeTextFile(`${root}/refs/main`, commits[i]);
      await Deno.writeFile(`${root}/snapshots/${commits[i]}/a.safetensors`, fileA);
    }
    await withServer(
      {
        HF_ENDPOINT: "http://127.0.0.1:9",
        HF_HUB_CACHE: await Deno.makeTempDir(),
        LORA_BUNDLED_CACHE: cache,
      },
      ({ url, engine }) => check(url, engine, names(commits)),
    );
  } finally {
    await Deno.remove(cache, { recursive: true });
  }
});

Deno.test("adapters: token-protected repo, pinned commit, and offline mode from the cache", async () => {
  await withHub(async (hub, env) => {
    const v1 = await hub.addCommit("acme/private", { "lora.safetensors": fileA }, { token: "hf_secret_123" });
    const v2 = await hub.addCommit("acme/private", { "lora.safetensors": fileB }, { token: "hf_secret_123" });
    await withServer({ ...env, HF_TOKEN: "hf_wrong" }, async ({ url }) => {
      const denied = await post(`${url}/generate`, {
        prompt: PROMPT,
        steps: 2,
        lora: { repo: "acme/private" },
      });
      const text = await denied.text();
      assertEquals([denied.status, JSON.parse(text).error.code], [403, "adapter_forbidden"]);
      assert(!text.includes("hf_wrong"), "the token is never echoed");
    });
    const pinned = await withServer({ ...env, HF_TOKEN: "hf_secret_123" }, async ({ url }) => {
      const latest = await generate(url, { repo: "acme/private" });
      assertEquals(latest.json.parameters.lora[0].commit, v2);
      const old = await generate(url, { repo: "acme/private", revision: v1 });
      assertEquals(old.json.parameters.lora[0].commit, v1);
      assertNotEquals(old.json.images[0].data, latest.json.images[0].data);
      return { latest, old };
    });
    hub.faults.status = 500; // offline mode must not ask
    await withServer({ ...env, HF_HUB_OFFLINE: "1" }, async ({ url }) => {
      assertEquals(
        (await generate(url, { repo: "acme/private" })).json.images[0].data,
        pinned.latest.json.images[0].data,
      );
      assertEquals(
        (await generate(url, { repo: "acme/private", revision: v1 })).json.images[0].data,
        pinned.old.json.images[0].data,
      );
      const missing = await generate(url, { repo: "acme/other" });
      assertEquals([missing.status, missing.json.error.code], [404, "adapter_not_cached"]);
    });
  });
});

Deno.test("adapters: 404, corrupt and mismatched files, size cap, allowlist, ambiguous files", async () => {
  await withHub(async (hub, env) => {
    await hub.addCommit("acme/a", { "a.safetensors": fileA });
    await hub.addCommit("acme/corrupt", { "x.safetensors": fileA.slice(0, 100) });
    const foreign = randomAdapter(targets.map((t) => ({ ...t, inFeatures: t.inFeatures + 1 })), {
      seed: 1,
      rank: 2,
      format: "diffusers-peft",
    });
    await hub.addCommit("acme/mismatch", { "x.safetensors": foreign });
    await hub.addCommit("acme/two", { "x.safetensors": fileA, "y.safetensors": fileB });
    await hub.addCommit("other/a", { "a.safetensors": fileA });
    await withServer(
      { ...env, LORA_MAX_BYTES: String(fileA.length - 1), LORA_ALLOWLIST: "acme/*" },
      async ({ url }) => {
        const cases: [unknown, number, string][] = [
          [{ repo: "acme/absent" }, 404, "adapter_not_found"],
          [{ repo: "acme/a", file: "nope.safetensors" }, 404, "adapter_not_found"],
          [{ repo: "acme/a", revision: "v9" }, 404, "adapter_not_found"],
          [{ repo: "acme/corrupt" }, 422, "invalid_adapter"],
          [{ repo: "acme/mismatch" }, 422, "adapter_mismatch"],
          [{ repo: "acme/two" }, 422, "adapter_file_ambiguous"],
          [{ repo: "acme/a" }, 413, "adapter_too_large"],
          [{ repo: "other/a" }, 403, "adapter_not_allowed"],
        ];
        for (const [lora, status, code] of cases) {
          const r = await generate(url, lora, { steps: 1 });
          assertEquals(
            [r.status, r.json.error.code, r.json.error.field],
            [status, code, "lora"],
            JSON.stringify(lora),
          );
        }
      },
    );
  });
});

Deno.test("adapters: repo, file and revision are validated (no traversal, no absolute paths, no URLs)", async () => {
  await withServer({ LORA_BUNDLED_CACHE: "" }, async ({ url }) => {
    const bad: [unknown, string][] = [
      [{ repo: "../etc" }, "lora.repo"],
      [{ repo: "a/b/c" }, "lora.repo"],
      [{ repo: "https://evil.example/x" }, "lora.repo"],
      [{ repo: "a/b", file: "/etc/passwd.safetensors" }, "lora.file"],
      [{ repo: "a/b", file: "../../x.safetensors" }, "lora.file"],
      [{ repo: "a/b", file: "http://x/y.safetensors" }, "lora.file"],
      [{ repo: "a/b", file: "weights.bin" }, "lora.file"],
      [{ repo: "a/b", revision: "../main" }, "lora.revision"],
      [{ repo: "a/b", scale: "1" }, "lora.scale"],
      [[1, 2, 3, 4, 5].map(() => ({ repo: "a/b" })), "lora"],
    ];
    for (const [lora, field] of bad) {
      const r = await generate(url, lora, { steps: 1 });
      assertEquals(
        [r.status, r.json.error.field?.replace(/\.\d+\./, ".")],
        [400, field],
        JSON.stringify(lora),
      );
    }
  });
});

Deno.test("adapters: the hub going down mid-download gives a clear 502, leaves nothing readable; cached adapters keep working", async () => {
  await withHub(async (hub, env) => {
    await hub.addCommit("acme/a", { "a.safetensors": fileA });
    await hub.addCommit("acme/b", { "b.safetensors": fileB });
    await withServer({ ...env, LORA_REVISION_TTL_S: "0" }, async ({ url }) => {
      const warm = await generate(url, { repo: "acme/a" });
      assertEquals(warm.status, 200);
      hub.faults.cutAfterBytes = 1000;
      const cut = await generate(url, { repo: "acme/b" });
      assertEquals([cut.status, cut.json.error.code], [502, "hub_unavailable"], JSON.stringify(cut.json));
      const blobs = await Array.fromAsync(Deno.readDir(`${env.HF_HUB_CACHE}/models--acme--b/blobs`)).catch(
        () => [],
      );
      for (const entry of blobs) {
        assert(
          entry.name.endsWith(".incomplete"),
          `only an .incomplete file may remain, found ${entry.name}`,
        );
      }
      hub.faults = { status: 503 };
      const stillWarm = await generate(url, { repo: "acme/a" });
      assertEquals(stillWarm.status, 200);
      assertEquals(stillWarm.json.images[0].data, warm.json.images[0].data);
      const down = await generate(url, { repo: "acme/b" });
      assertEquals([down.status, down.json.error.code], [502, "hub_unavailable"]);
      hub.faults = {};
      assertEquals((await generate(url, { repo: "acme/b" })).status, 200, "recovers when the hub is back");
    });
  });
});

Deno.test("adapters: the in-memory LRU is bounded by bytes and never evicts an adapter in use", async () => {
  await withHub(async (hub, env) => {
    await hub.addCommit("acme/a", { "a.safetensors": fileA });
    await hub.addCommit("acme/c", {
      "c.safetensors": randomAdapter(targets, { seed: 7, rank: 4, format: "kohya" }),
    });
    const bytesOfOne = targets.reduce((n, t) => n + 4 * (t.inFeatures + t.outFeatures) * 4, 0);
    await withServer(
      { ...env, LORA_CACHE_BYTES: String(Math.floor(bytesOfOne * 1.5)), MAX_STEPS: "400" },
      async ({ url, engine }) => {
        const loaded = () => engine.state.loadedAdapters.map((a) => a.repo);
        const long = post(`${url}/generate`, { prompt: PROMPT, steps: 400, lora: { repo: "acme/a" } }, {
          accept: "text/event-stream",
        });
        const reader = (await long).body!.getReader();
        while (!new TextDecoder().decode((await reader.read()).value).includes('"step"'));
        assertEquals((await generate(url, { repo: "acme/c" })).status, 200);
        assertEquals(
          loaded(),
          ["acme/a"],
          "over the bound: the idle acme/c goes, acme/a is in use and stays",
        );
        while (!(await reader.read()).done);
        assertEquals((await generate(url, { repo: "acme/c" })).status, 200);
        assertEquals(loaded(), ["acme/c"], "acme/a is idle now and least recently used: it goes");
        assert(engine.state.adapters.bytes <= bytesOfOne * 1.5);
      },
    );
  });
});

Deno.test("adapters: the revisions a client names are forgotten with the adapter they resolved to", async () => {
  await withHub(async (hub, env) => {
    const commit = await hub.addCommit("acme/a", { "a.safetensors": fileA });
    await hub.addCommit("acme/c", {
      "c.safetensors": randomAdapter(targets, { seed: 7, rank: 4, format: "kohya" }),
    });
    const bytesOfOne = targets.reduce((n, t) => n + 4 * (t.inFeatures + t.outFeatures) * 4, 0);
    await withServer(
      { ...env, LORA_CACHE_BYTES: String(Math.floor(bytesOfOne * 1.5)) },
      async ({ url, engine }) => {
        for (
          const lora of [
            { repo: "acme/a" },
            { repo: "acme/a", revision: commit },
            { repo: "acme/a", file: "a.safetensors" },
            { repo: "acme/a", revision: commit, file: "a.safetensors" },
          ]
        ) {
          assertEquals((await generate(url, lora, { steps: 1 })).status, 200);
        }
        assertEquals(engine.state.adapters.resolvedRevisions, 4);
        assertEquals((await generate(url, { repo: "acme/c" }, { steps: 1 })).status, 200);
        assertEquals(engine.state.loadedAdapters.map((a) => a.repo), ["acme/c"], "acme/a was evicted");
        assertEquals(engine.state.adapters.resolvedRevisions, 1, "only acme/c's revision is still known");
      },
    );
  });
});

Deno.test("adapters: the adapters this repository ships in models/hub-cache (test, Smooth-LoRA, baseline) work with no network, earlier commits by revision", async () => {
  // Port 9 on loopback: any attempt to reach a hub fails at once.
  await withServer(
    { HF_ENDPOINT: "http://127.0.0.1:9", HF_HUB_CACHE: await Deno.makeTempDir() },
    async ({ url }) => {
      const base = await generate(url);
      const images = new Set([base.json.images[0].data]);
      let snapshots = 0;
      for (const name of ["test-lora", "tiny-sd-shapes-smooth-lora", "tiny-sd-shapes-baseline-lora"]) {
        const root = new URL(`../models/hub-cache/models--smooth-diffusion--${name}/`, import.meta.url);
        const main = (await Deno.readTextFile(new URL("refs/main", root))).trim();
        const commits = [undefined, ...[...Deno.readDirSync(new URL("snapshots/", root))].map((e) => e.name)];
        for (const revision of commits) {
          const withAdapter = await generate(url, { repo: `smooth-diffusion/${name}`, revision });
          assertEquals(withAdapter.status, 200, JSON.stringify(withAdapter.json));
          assertEquals(withAdapter.json.parameters.lora[0].commit, revision ?? main);
          assertEquals(
            withAdapter.json.not_applied ?? withAdapter.json.parameters.lora[0].not_applied ?? [],
            [],
          );
          if (revision) {
            images.add(withAdapter.json.images[0].data);
            snapshots++;
          }
        }
      }
      assertEquals(images.size, 1 + snapshots, "each adapter commit changes the image");
    },
  );
});
