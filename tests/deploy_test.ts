/** The Kubernetes example must match the server it deploys: ports, probe paths, environment names. */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { parseAllDocuments } from "yaml";
import { CONFIG_VARIABLES, loadConfig } from "../config.ts";
import { withServer } from "./helpers.ts";

const docs = parseAllDocuments(await Deno.readTextFile(new URL("../deploy/kubernetes.yaml", import.meta.url)))
  .map((d) => d.toJS());
const deployment = docs.find((d) => d.kind === "Deployment");
const container = deployment.spec.template.spec.containers[0];
const env: { name: string; value?: string }[] = container.env;

Deno.test("deploy: every environment variable is one the server reads, and their values are valid", () => {
  for (const { name } of env) assert(CONFIG_VARIABLES.includes(name), `${name} is not read by config.ts`);
  const values = Object.fromEntries(env.filter((e) => e.value !== undefined).map((e) => [e.name, e.value!]));
  const config = loadConfig(values);
  assertEquals(config.port, container.ports[0].containerPort);
  const service = docs.find((d) => d.kind === "Service");
  assertEquals(service.spec.ports[0].targetPort, container.ports[0].name);
  assertEquals(container.resources.requests["nvidia.com/gpu"], 1);
  assert(deployment.spec.template.spec.volumes[0].persistentVolumeClaim, "the Hub cache lives on a volume");
  assert(env.some((e) => e.name === "HF_HOME" && e.value!.startsWith(container.volumeMounts[0].mountPath)));
});

Deno.test("deploy: the probes hit routes the server answers", async () => {
  await withServer({}, async ({ url }) => {
    for (const probe of ["livenessProbe", "readinessProbe", "startupProbe"]) {
      const { path, port } = container[probe].httpGet;
      assertEquals(port, container.ports[0].name);
      const res = await fetch(`${url}${path}`);
      assertEquals(res.status, 200, `${probe} ${path}`);
      await res.body?.cancel();
    }
  });
});

Deno.test("deploy: the README's configuration table lists every variable the server reads, and no other", async () => {
  const readme = await Deno.readTextFile(new URL("../README.md", import.meta.url));
  const section = readme.slice(
    readme.indexOf("## Configuration"),
    readme.indexOf("\n## ", readme.indexOf("## Configuration") + 1),
  );
  const documented = new Set(
    section.split("\n").filter((l) => l.startsWith("| `")).flatMap((l) =>
      [...l.split("|")[1].matchAll(/`([A-Z_]+)`/g)].map((m) => m[1])
    ),
  );
  assertEquals(
    [...CONFIG_VARIABLES].filter((v) => !documented.has(v)),
    [],
    "read by config.ts, missing from the README",
  );
  assertEquals(
    [...documented].filter((v) => !CONFIG_VARIABLES.includes(v)),
    [],
    "in the README, not read by config.ts",
  );
});
