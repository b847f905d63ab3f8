/**
 * The route table drives the app: its model tasks, and only they, are refused while draining and
 * run as jobs; every route of the native API is in /openapi.json, and the document has no other.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { createApp } from "../routes/app.ts";
import { openApiPath } from "../routes/openapi.ts";
import { testConfig, withServer } from "./helpers.ts";

/** The routes that run the model, as the table must flag them. */
const TASKS = [
  "POST /generate",
  "POST /invert",
  "POST /edit",
  "POST /interpolate",
  "POST /v1/images/generations",
  "POST /v1/images/edits",
  "POST /sdapi/v1/txt2img",
  "POST /sdapi/v1/img2img",
];
/** The routes that follow another API's document, or none. */
const UNDOCUMENTED = /^\/(sdapi\/v1\/|v1\/images\/|$)/;

const concrete = (path: string) => path.replace(/:\w+/g, "x");
const name = (route: { method: string; path: string }) => `${route.method} ${route.path}`;

Deno.test("route table: task routes refused while draining and run as jobs; native routes in /openapi.json", async () => {
  await withServer({}, async ({ engine }) => {
    let draining = true;
    const { app, routes, close } = createApp({ engine, config: testConfig(), draining: () => draining });
    try {
      assertEquals(routes.filter((r) => r.task).map(name).sort(), [...TASKS].sort());

      for (const route of routes) {
        const res = await app.request(concrete(route.path), { method: route.method });
        const code = res.headers.get("content-type")?.startsWith("application/json")
          ? (await res.json())?.error?.code
          : await res.body?.cancel();
        assertEquals(code === "draining", route.task, name(route));
        if (route.task) assertEquals([res.status, res.headers.get("retry-after")], [503, "1"], name(route));
      }

      // A body that is no JSON fails fast in the job, without running the model.
      draining = false;
      const async = {
        method: "POST",
        headers: { prefer: "respond-async", "content-type": "application/json" },
      };
      for (const route of routes.filter((r) => r.method === "POST")) {
        const res = await app.request(route.path, { ...async, body: "{" });
        await res.body?.cancel();
        assertEquals(res.status === 202, route.task, name(route));
        if (!route.task) continue;
        let job = await app.request(res.headers.get("location")!);
        while (job.status === 202) {
          await job.body?.cancel();
          await new Promise((r) => setTimeout(r, 5));
          job = await app.request(res.headers.get("location")!);
        }
        await job.body?.cancel();
        assertEquals([job.status, job.headers.get("x-job-status")], [400, "failed"], name(route));
      }

      const documented = (await (await app.request("/openapi.json")).json()).paths;
      for (const route of routes) {
        const entry = documented[openApiPath(route.path)]?.[route.method.toLowerCase()];
        assertEquals(entry !== undefined, !UNDOCUMENTED.test(route.path), name(route));
        if (route.task && entry) assert(entry.responses["202"] && entry.responses["503"], name(route));
      }
      const served = new Set(routes.map((r) => `${r.method.toLowerCase()} ${openApiPath(r.path)}`));
      for (const [path, operations] of Object.entries<object>(documented)) {
        for (const method of Object.keys(operations)) {
          assert(served.has(`${method} ${path}`), `${method} ${path}`);
        }
      }
    } finally {
      await close();
    }
  });
});
