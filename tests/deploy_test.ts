/**
 * The Kubernetes example and the Dockerfile must match the server they deploy: ports, probe paths,
 * environment names, and what the image needs for the GPU providers.
 */
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

/** The Dockerfile's instructions, stage by stage: continuation lines joined, comments dropped. */
function dockerStages(text: string): { from: string; instructions: [string, string][] }[] {
  const lines = text.replace(/\\\n/g, " ").split("\n").map((l) => l.trim()).filter((l) =>
    l && !l.startsWith("#")
  );
  const stages: { from: string; instructions: [string, string][] }[] = [];
  for (const line of lines) {
    const [, keyword, rest] = line.match(/^(\S+)\s+(.*)$/)!;
    if (keyword.toUpperCase() === "FROM") stages.push({ from: rest, instructions: [] });
    else stages.at(-1)!.instructions.push([keyword.toUpperCase(), rest]);
  }
  return stages;
}

Deno.test("deploy: the Dockerfile's runtime stage is the server as configured: env, port, volume, user, health check, command", async () => {
  const stages = dockerStages(await Deno.readTextFile(new URL("../Dockerfile", import.meta.url)));
  assert(stages.length >= 2, "multi-stage");
  const runtime = stages.at(-1)!;
  assert(
    /^nvidia\/cuda:12\.[\d.]+-cudnn-runtime-/.test(runtime.from),
    `CUDA 12 runtime base: ${runtime.from}`,
  );
  const all = (keyword: string) => runtime.instructions.filter(([k]) => k === keyword).map(([, v]) => v);

  const env = Object.fromEntries(
    all("ENV").flatMap((v) => [...v.matchAll(/([A-Z_]+)=(\S+)/g)].map((m) => [m[1], m[2]])),
  );
  // Variables for the runtime, not the server: Deno's cache, and what the NVIDIA container runtime
  // exposes of the driver (`graphics` brings its Vulkan driver, which the WebGPU provider needs).
  const runtimeOnly = ["DENO_DIR", "NVIDIA_DRIVER_CAPABILITIES"];
  const serverEnv = Object.fromEntries(Object.entries(env).filter(([name]) => !runtimeOnly.includes(name)));
  for (const name of Object.keys(serverEnv)) {
    assert(CONFIG_VARIABLES.includes(name), `${name} is not read by config.ts`);
  }
  const config = loadConfig(serverEnv);
  assertEquals(all("EXPOSE"), [String(config.port)]);
  assertEquals(config.executionProvider, "auto");

  // What `auto` needs to fall back to WebGPU on an NVIDIA GPU: the Vulkan loader installed, and the
  // driver capabilities that mount the NVIDIA Vulkan driver next to CUDA's.
  const capabilities = (env.NVIDIA_DRIVER_CAPABILITIES ?? "").split(",");
  for (const capability of ["compute", "utility", "graphics"]) {
    assert(
      capabilities.includes(capability) || capabilities.includes("all"),
      `NVIDIA_DRIVER_CAPABILITIES has ${capability}: ${env.NVIDIA_DRIVER_CAPABILITIES}`,
    );
  }
  const installed = all("RUN").flatMap((run) =>
    [...run.matchAll(/apt-get install ([^&|;]*)/g)].flatMap((m) =>
      m[1].split(/\s+/).filter((w) => /^[a-z]/.test(w))
    )
  );
  assert(installed.includes("libvulkan1"), `the runtime stage installs the Vulkan loader: ${installed}`);

  const volumes: string[] = all("VOLUME").flatMap((v) => JSON.parse(v));
  for (const name of ["HF_HOME", "CACHE_DIR"]) {
    assert(volumes.some((volume) => env[name].startsWith(`${volume}/`)), `${name} lives on a volume`);
  }
  const user = all("USER").at(-1);
  assert(user && user !== "root" && user !== "0", `runs as a non-root user: ${user}`);

  // The command is the start task's, with the flag deno.json sets for `deno task start`.
  const deno = JSON.parse(await Deno.readTextFile(new URL("../deno.json", import.meta.url)));
  const command: string[] = JSON.parse(all("CMD").at(-1)!);
  assertEquals(
    command.filter((arg) => !arg.startsWith("--unstable-")),
    deno.tasks.start.split(" "),
  );
  for (const flag of deno.unstable) assert(command.includes(`--unstable-${flag}`), `--unstable-${flag}`);

  const healthcheck = all("HEALTHCHECK").at(-1)!;
  const path = healthcheck.match(/\$\{PORT\}(\/\S*?)"/)![1];
  await withServer({}, async ({ url }) => {
    const res = await fetch(`${url}${path}`);
    assertEquals(res.status, 200, `HEALTHCHECK ${path}`);
    await res.body?.cancel();
  });
});
