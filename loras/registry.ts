/**
 * Adapters by name: resolved on the Hugging Face Hub through @huggingface/hub (or a local Hub
 * cache), parsed once, and kept in memory in an LRU bounded by bytes. An adapter in use by a
 * request is never evicted. Concurrent requests for one adapter share one download.
 */
import { downloadFileToCacheDir, listFiles, pathsInfo } from "@huggingface/hub";
import { basename, join } from "node:path";
import { type Adapter, AdapterError, buildAdapter } from "./adapter.ts";
import type { LoraTarget } from "./graph_rewrite.ts";
import type { AppliedAdapter } from "./pack.ts";

export interface AdapterSpec {
  repo: string;
  file?: string;
  revision: string;
  scale: number;
}

export interface RegistryOptions {
  endpoint: string;
  token?: string;
  /** The Hub cache that downloads go to. */
  cacheDir: string;
  /** Read-only Hub caches searched before the network (e.g. the one this repository ships). */
  bundledCacheDirs: string[];
  offline: boolean;
  maxAdapterBytes: number;
  memoryBytes: number;
  /** Glob patterns over `org/name`; empty: any repo. */
  allowlist: string[];
  timeoutMs: number;
  /** How long a branch name's resolved commit is trusted before the hub is asked again. */
  revisionTtlMs: number;
}

export type RegistryErrorCode =
  | "adapter_not_allowed"
  | "adapter_not_found"
  | "adapter_forbidden"
  | "adapter_too_large"
  | "adapter_not_cached"
  | "adapter_file_ambiguous"
  | "hub_unavailable"
  | "hub_timeout";

export class RegistryError extends Error {
  constructor(readonly code: RegistryErrorCode, message: string) {
    super(message);
  }
}

/** A located adapter file: a local path, or the hub's word on it and how to download it. */
interface Located {
  commit: string;
  file: string;
  path?: string;
  fetch?: () => Promise<string>;
  /** Resolved by the hub (its revision is recorded in the cache once the file is there). */
  fromHub?: boolean;
}

interface Entry {
  adapter: Adapter;
  users: number;
}

const COMMIT = /^[0-9a-f]{40}$/;

function globToRegExp(glob: string): RegExp {
  return new RegExp(
    `^${glob.split("*").map((part) => part.replace(/[.+?^${}()|[\]\\]/g, "\\$&")).join("[^/]*")}$`,
  );
}

function repoFolder(repo: string): string {
  return `models--${repo.replace("/", "--")}`;
}

async function readText(path: string): Promise<string | undefined> {
  try {
    return (await Deno.readTextFile(path)).trim();
  } catch {
    return undefined;
  }
}

function chooseFile(files: string[], repo: string): string {
  const candidates = files.filter((f) => f.endsWith(".safetensors"));
  const preferred = candidates.find((f) => basename(f) === "pytorch_lora_weights.safetensors");
  if (preferred) return preferred;
  if (candidates.length === 1) return candidates[0];
  throw new RegistryError(
    "adapter_file_ambiguous",
    candidates.length === 0
      ? `${repo} has no .safetensors file`
      : `${repo} has several .safetensors files (${candidates.slice(0, 4).join(", ")}): name one in "file"`,
  );
}

export class AdapterRegistry {
  readonly stats = { hits: 0, misses: 0, downloads: 0 };
  #entries = new Map<string, Entry>(); // insertion order = recency
  #inflight = new Map<string, Promise<Adapter>>(); // by the name requested
  #reading = new Map<string, Promise<Adapter>>(); // by the file it resolved to (the adapter's id)
  #resolved = new Map<string, { id: string; at: number }>();
  #allow: RegExp[];
  #bytes = 0;

  constructor(private readonly targets: Map<string, LoraTarget>, private readonly options: RegistryOptions) {
    this.#allow = options.allowlist.map(globToRegExp);
  }

  get bytes(): number {
    return this.#bytes;
  }

  /** How many (repo, revision, file) names are remembered with the adapter they resolved to. */
  get resolvedRevisions(): number {
    return this.#resolved.size;
  }

  loaded(): {
    id: string;
    repo: string;
    file: string;
    commit: string;
    format: string;
    rank: number;
    bytes: number;
    in_use: number;
  }[] {
    return [...this.#entries.values()].map(({ adapter: a, users }) => ({
      id: a.id,
      repo: a.source.repo,
      file: a.source.file,
      commit: a.source.commit,
      format: a.format,
      rank: a.rank,
      bytes: a.bytes,
      in_use: users,
    }));
  }

  /**
   * The adapters that the Hub caches hold (the bundled ones, then the download cache), as `acquire`
   * would find them there: one per repo allowed here, at its `main` ref (else its first ref), with
   * the file this registry would choose. Reads the caches only: no hub, no parsing, nothing loaded.
   */
  async cachedAdapters(): Promise<{ repo: string; revision: string; commit: string; file: string }[]> {
    const found = new Map<string, { repo: string; revision: string; commit: string; file: string }>();
    for (const cache of [...this.options.bundledCacheDirs, this.options.cacheDir]) {
      const folders: string[] = [];
      try {
        for await (const entry of Deno.readDir(cache)) if (entry.isDirectory) folders.push(entry.name);
      } catch {
        continue;
      }
      for (const folder of folders.sort()) {
        const match = /^models--(.+?)--(.+)$/.exec(folder);
        const repo = match && `${match[1]}/${match[2]}`;
        if (!repo || found.has(repo) || (this.#allow.length && !this.#allow.some((re) => re.test(repo)))) {
          continue;
        }
        const refs: string[] = [];
        try {
          for await (const entry of Deno.readDir(join(cache, folder, "refs"))) {
            if (entry.isFile) refs.push(entry.name);
          }
        } catch {
          continue;
        }
        const mainFirst = (a: string, b: string) =>
          Number(b === "main") - Number(a === "main") || (a < b ? -1 : 1);
        for (const revision of refs.sort(mainFirst)) {
          const spec = { repo, revision, scale: 1 };
          const located = await this.#fromCaches(spec, [cache]).catch(() => undefined);
          if (!located) continue;
          found.set(repo, { repo, revision, commit: located.commit, file: located.file });
          break;
        }
      }
    }
    return [...found.values()];
  }

  /** Resolves and pins the adapters of one request; `release` unpins them when it is done. */
  async acquire(specs: AdapterSpec[]): Promise<{ applied: AppliedAdapter[]; release: () => void }> {
    const adapters: Adapter[] = [];
    const release = () => {
      for (const a of adapters.splice(0)) {
        const entry = this.#entries.get(a.id);
        if (entry) entry.users--;
      }
      this.#evict();
    };
    try {
      for (const spec of specs) {
        const adapter = await this.#get(spec);
        this.#pin(adapter);
        adapters.push(adapter);
      }
    } catch (error) {
      release();
      throw error;
    }
    this.#evict();
    return { applied: adapters.map((adapter, i) => ({ adapter, scale: specs[i].scale })), release };
  }

  async #get(spec: AdapterSpec): Promise<Adapter> {
    if (this.#allow.length && !this.#allow.some((re) => re.test(spec.repo))) {
      throw new RegistryError(
        "adapter_not_allowed",
        `${spec.repo} is not in this server's adapter allowlist`,
      );
    }
    const key = `${spec.repo}@${spec.revision}:${spec.file ?? ""}`;
    const known = this.#resolved.get(key);
    const fresh = known && (COMMIT.test(spec.revision) || Date.now() - known.at < this.options.revisionTtlMs);
    const cached = fresh ? this.#entries.get(known.id) : undefined;
    if (cached) {
      this.stats.hits++;
      this.#entries.delete(known!.id);
      this.#entries.set(known!.id, cached); // most recently used
      return cached.adapter;
    }
    let pending = this.#inflight.get(key);
    if (!pending) {
      this.stats.misses++;
      pending = this.#load(spec).finally(() => this.#inflight.delete(key));
      this.#inflight.set(key, pending);
    }
    const adapter = await pending;
    this.#resolved.set(key, { id: adapter.id, at: Date.now() });
    return adapter;
  }

  /**
   * Locates the file (local caches, else the hub's metadata), then reads it once per file: keys
   * that name the same file (a branch and its commit, the file named and not) share one download
   * and one read, and the entry is added once.
   */
  async #load(spec: AdapterSpec): Promise<Adapter> {
    const located = await this.#locate(spec);
    let adapter;
    try {
      adapter = await this.#readOnce(spec, located);
    } catch (error) {
      // The hub failed during the download: an adapter already in the cache still serves.
      const stale = located.fetch && error instanceof RegistryError && error.code.startsWith("hub_")
        ? await this.#fromCaches(spec, [this.options.cacheDir])
        : undefined;
      if (!stale) throw error;
      return await this.#readOnce(spec, stale);
    }
    if (located.fromHub && !COMMIT.test(spec.revision)) {
      // @huggingface/hub does not record refs; do it so the cache serves this revision offline.
      const refs = join(this.options.cacheDir, repoFolder(spec.repo), "refs");
      await Deno.mkdir(refs, { recursive: true });
      await Deno.writeTextFile(join(refs, spec.revision), located.commit);
    }
    return adapter;
  }

  async #locate(spec: AdapterSpec): Promise<Located> {
    const local = await this.#fromCaches(spec, [
      ...this.options.bundledCacheDirs,
      ...(this.options.offline ? [this.options.cacheDir] : []),
    ]);
    if (local) return local;
    if (this.options.offline) {
      throw new RegistryError("adapter_not_cached", `${await this.#notCached(spec)} (HF_HUB_OFFLINE is set)`);
    }
    try {
      return await this.#fromHub(spec);
    } catch (error) {
      // The hub is unreachable: an adapter already in the cache still serves.
      const stale = error instanceof RegistryError && error.code.startsWith("hub_")
        ? await this.#fromCaches(spec, [this.options.cacheDir])
        : undefined;
      if (!stale) throw error;
      return stale;
    }
  }

  #readOnce(spec: AdapterSpec, located: Located): Promise<Adapter> {
    const id = `${spec.repo}@${located.commit}:${located.file}`;
    const existing = this.#entries.get(id);
    if (existing) return Promise.resolve(existing.adapter);
    let reading = this.#reading.get(id);
    if (!reading) {
      reading = this.#read(spec, located).finally(() => this.#reading.delete(id));
      this.#reading.set(id, reading);
    }
    return reading;
  }

  async #read(spec: AdapterSpec, located: Located): Promise<Adapter> {
    const path = located.path ?? await located.fetch!();
    const bytes = await Deno.readFile(path);
    if (bytes.length > this.options.maxAdapterBytes) {
      throw new RegistryError(
        "adapter_too_large",
        `${located.file} is ${bytes.length} bytes; the limit is ${this.options.maxAdapterBytes}`,
      );
    }
    const adapter = buildAdapter(
      { repo: spec.repo, file: located.file, revision: spec.revision, commit: located.commit },
      bytes,
      this.targets,
    );
    // After the last await: a request that pinned this adapter may have put it back meanwhile.
    const existing = this.#entries.get(adapter.id);
    if (existing) return existing.adapter;
    this.#entries.set(adapter.id, { adapter, users: 0 });
    this.#bytes += adapter.bytes;
    this.#evict();
    return adapter;
  }

  /** Marks the adapter in use, (re)entering it in the cache if it is not there. */
  #pin(adapter: Adapter): void {
    let entry = this.#entries.get(adapter.id);
    if (!entry) {
      entry = { adapter, users: 0 };
      this.#entries.set(adapter.id, entry);
      this.#bytes += adapter.bytes;
    }
    entry.users++;
  }

  #evict(): void {
    for (const [id, entry] of this.#entries) {
      if (this.#bytes <= this.options.memoryBytes) return;
      if (entry.users > 0) continue;
      this.#entries.delete(id);
      this.#bytes -= entry.adapter.bytes;
      // The names that resolved to it go with it: they are the clients' choice, so unbounded.
      for (const [key, known] of this.#resolved) if (known.id === id) this.#resolved.delete(key);
    }
  }

  /** A snapshot in a Hub cache: commit from the revision itself or from refs/<revision>. */
  async #fromCaches(
    spec: AdapterSpec,
    caches: string[],
  ): Promise<{ path: string; commit: string; file: string } | undefined> {
    for (const cache of caches) {
      const root = join(cache, repoFolder(spec.repo));
      const commit = COMMIT.test(spec.revision)
        ? spec.revision
        : await readText(join(root, "refs", spec.revision));
      if (!commit) continue;
      const snapshot = join(root, "snapshots", commit);
      let file = spec.file;
      if (!file) {
        const names: string[] = [];
        try {
          for await (const entry of Deno.readDir(snapshot)) names.push(entry.name);
        } catch {
          continue;
        }
        file = chooseFile(names, spec.repo);
      }
      try {
        await Deno.stat(join(snapshot, file));
        return { path: join(snapshot, file), commit, file };
      } catch {
        continue;
      }
    }
    return undefined;
  }

  /** What of the adapter the local caches lack: the repo, the revision, or the file in the snapshot. */
  async #notCached(spec: AdapterSpec): Promise<string> {
    const caches = [...this.options.bundledCacheDirs, this.options.cacheDir];
    let repo = false;
    for (const cache of caches) {
      const root = join(cache, repoFolder(spec.repo));
      try {
        await Deno.stat(root);
      } catch {
        continue;
      }
      repo = true;
      const commit = COMMIT.test(spec.revision)
        ? spec.revision
        : await readText(join(root, "refs", spec.revision));
      if (!commit) continue;
      try {
        await Deno.stat(join(root, "snapshots", commit));
      } catch {
        continue;
      }
      return `${spec.repo}@${spec.revision} is in the Hub cache but has no file ${
        spec.file ?? "(none named)"
      } there`;
    }
    return repo
      ? `${spec.repo} is in the Hub cache but not at revision ${spec.revision}`
      : `${spec.repo} is not in the Hub cache`;
  }

  #fetch = (input: RequestInfo | URL, init?: RequestInit): Promise<Response> =>
    fetch(input, { ...init, signal: AbortSignal.timeout(this.options.timeoutMs) });

  /** The file's commit from the hub's metadata, with the download left to `fetch`. */
  async #fromHub(spec: AdapterSpec): Promise<Located> {
    const common = {
      repo: { type: "model" as const, name: spec.repo },
      revision: spec.revision,
      hubUrl: this.options.endpoint,
      accessToken: this.options.token,
      cacheDir: this.options.cacheDir,
      fetch: this.#fetch,
    };
    try {
      let file = spec.file;
      if (!file) {
        const names: string[] = [];
        for await (const entry of listFiles(common)) if (entry.type === "file") names.push(entry.path);
        file = chooseFile(names, spec.repo);
      }
      const [info] = await pathsInfo({ ...common, paths: [file], expand: true });
      if (!info) {
        throw new RegistryError("adapter_not_found", `${spec.repo}@${spec.revision} has no file ${file}`);
      }
      if (info.size > this.options.maxAdapterBytes) {
        throw new RegistryError(
          "adapter_too_large",
          `${file} is ${info.size} bytes; the limit is ${this.options.maxAdapterBytes}`,
        );
      }
      const download = async () => {
        this.stats.downloads++;
        const path = await downloadFileToCacheDir({ ...common, path: file });
        const commit = info.lastCommit?.id ?? path.split("/snapshots/")[1]?.split("/")[0];
        if (!commit || !COMMIT.test(commit)) {
          throw new RegistryError("hub_unavailable", `the hub gave no commit for ${spec.repo}`);
        }
        return { path, commit };
      };
      const known = info.lastCommit?.id;
      if (!known || !COMMIT.test(known)) {
        // No commit without the download: download now (no sharing with other names).
        const { path, commit } = await download();
        return { path, commit, file, fromHub: true };
      }
      return {
        commit: known,
        file,
        fromHub: true,
        fetch: async () => {
          try {
            return (await download()).path;
          } catch (error) {
            throw this.#hubError(error, spec);
          }
        },
      };
    } catch (error) {
      throw this.#hubError(error, spec);
    }
  }

  #hubError(error: unknown, spec: AdapterSpec): unknown {
    if (error instanceof RegistryError || error instanceof AdapterError) return error;
    const status = (error as { statusCode?: number }).statusCode;
    const name = `${spec.repo}@${spec.revision}${spec.file ? `:${spec.file}` : ""}`;
    if (status === 404) return new RegistryError("adapter_not_found", `${name} was not found on the hub`);
    if (status === 401 || status === 403) {
      return new RegistryError(
        "adapter_forbidden",
        `the hub refused access to ${spec.repo} (the server's HF_TOKEN is missing or lacks access)`,
      );
    }
    if (error instanceof DOMException && (error.name === "TimeoutError" || error.name === "AbortError")) {
      return new RegistryError(
        "hub_timeout",
        `the hub did not answer within ${this.options.timeoutMs} ms for ${name}`,
      );
    }
    return new RegistryError(
      "hub_unavailable",
      `the hub failed for ${name}: ${status ? `status ${status}` : (error as Error).message}`,
    );
  }
}
