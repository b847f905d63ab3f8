/**
 * A loopback stand-in for the Hugging Face Hub, speaking the endpoints @huggingface/hub uses:
 * the tree listing, paths-info and resolve (with Range, ETag, X-Repo-Commit). Repos live in
 * memory; each commit is a full file set. Faults can be switched on for failure tests.
 */
export interface HubRepoCommit {
  files: Record<string, Uint8Array>;
}

interface StoredCommit {
  sha: string;
  files: Map<string, { bytes: Uint8Array; gitOid: string; sha256: string }>;
}

interface StoredRepo {
  commits: Map<string, StoredCommit>;
  refs: Map<string, string>;
  token?: string;
}

export interface HubFaults {
  /** Answer every request with this status. */
  status?: number;
  /** Cut the connection of file downloads after this many bytes of the body. */
  cutAfterBytes?: number;
}

const LFS_THRESHOLD = 1024 * 1024;

async function digestHex(algorithm: "SHA-1" | "SHA-256", bytes: Uint8Array): Promise<string> {
  const hash = await crypto.subtle.digest(algorithm, bytes as Uint8Array<ArrayBuffer>);
  return Array.from(new Uint8Array(hash), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function gitBlobOid(bytes: Uint8Array): Promise<string> {
  const header = new TextEncoder().encode(`blob ${bytes.length}\0`);
  const whole = new Uint8Array(header.length + bytes.length);
  whole.set(header);
  whole.set(bytes, header.length);
  return await digestHex("SHA-1", whole);
}

export class FakeHub {
  readonly repos = new Map<string, StoredRepo>();
  readonly requests: { method: string; path: string }[] = [];
  faults: HubFaults = {};
  #server: Deno.HttpServer<Deno.NetAddr>;

  constructor() {
    this.#server = Deno.serve(
      { port: 0, hostname: "127.0.0.1", onListen: () => {} },
      (req) => this.#handle(req),
    );
  }

  get url(): string {
    return `http://127.0.0.1:${this.#server.addr.port}`;
  }

  close(): Promise<void> {
    return this.#server.shutdown();
  }

  /** Adds a commit (the whole file set) to `repo` and points `main` at it; returns its sha. */
  async addCommit(
    repo: string,
    files: Record<string, Uint8Array>,
    options: { token?: string; ref?: string } = {},
  ): Promise<string> {
    const stored = this.repos.get(repo) ?? { commits: new Map(), refs: new Map(), token: options.token };
    const entries = await Promise.all(
      Object.entries(files).map(async ([path, bytes]) =>
        [path, { bytes, gitOid: await gitBlobOid(bytes), sha256: await digestHex("SHA-256", bytes) }] as const
      ),
    );
    const sha = await digestHex(
      "SHA-1",
      new TextEncoder().encode(
        `${repo}:${stored.commits.size}:${entries.map(([p, e]) => p + e.sha256).join()}`,
      ),
    );
    stored.commits.set(sha, { sha, files: new Map(entries) });
    stored.refs.set(options.ref ?? "main", sha);
    this.repos.set(repo, stored);
    return sha;
  }

  static async filesOfDirectory(dir: string, prefix = ""): Promise<Record<string, Uint8Array>> {
    const files: Record<string, Uint8Array> = {};
    for await (const entry of Deno.readDir(dir)) {
      const path = prefix ? `${prefix}/${entry.name}` : entry.name;
      if (entry.isDirectory) {
        Object.assign(files, await FakeHub.filesOfDirectory(`${dir}/${entry.name}`, path));
      } else if (entry.isFile) files[path] = await Deno.readFile(`${dir}/${entry.name}`);
    }
    return files;
  }

  #error(status: number, code: string, message: string): Response {
    return Response.json({ error: message }, { status, headers: { "X-Error-Code": code } });
  }

  #commitOf(repoName: string, revision: string, req: Request): StoredCommit | Response {
    const repo = this.repos.get(repoName);
    if (!repo) return this.#error(404, "RepoNotFound", `Repository not found: ${repoName}`);
    if (repo.token && req.headers.get("authorization") !== `Bearer ${repo.token}`) {
      return this.#error(401, "RepoNotFound", "Invalid credentials in Authorization header");
    }
    const sha = repo.refs.get(revision) ?? (repo.commits.has(revision) ? revision : undefined);
    const commit = sha && repo.commits.get(sha);
    return commit || this.#error(404, "RevisionNotFound", `Invalid rev id: ${revision}`);
  }

  async #handle(req: Request): Promise<Response> {
    const url = new URL(req.url);
    this.requests.push({ method: req.method, path: url.pathname });
    if (this.faults.status) return this.#error(this.faults.status, "Unavailable", "the hub is down");
    const parts = url.pathname.split("/").filter(Boolean).map(decodeURIComponent);

    if (parts[0] === "api" && parts[1] === "models" && (parts[4] === "tree" || parts[4] === "paths-info")) {
      const repo = `${parts[2]}/${parts[3]}`;
      const commit = this.#commitOf(repo, parts[5] ?? "main", req);
      if (commit instanceof Response) return commit;
      const describe = (path: string) => {
        const file = commit.files.get(path)!;
        return {
          type: "file",
          path,
          size: file.bytes.length,
          oid: file.gitOid,
          ...(file.bytes.length >= LFS_THRESHOLD
            ? { lfs: { oid: file.sha256, size: file.bytes.length, pointerSize: 134 } }
            : {}),
          lastCommit: { id: commit.sha, title: "commit", date: "2026-01-01T00:00:00.000Z" },
        };
      };
      if (parts[4] === "tree") {
        const under = parts.slice(6).join("/");
        const paths = [...commit.files.keys()].filter((p) => !under || p.startsWith(`${under}/`));
        return Response.json(paths.map(describe));
      }
      const { paths } = await req.json();
      return Response.json((paths as string[]).filter((p) => commit.files.has(p)).map(describe));
    }

    if (parts.length >= 5 && parts[2] === "resolve") {
      const repo = `${parts[0]}/${parts[1]}`;
      const commit = this.#commitOf(repo, parts[3], req);
      if (commit instanceof Response) return commit;
      const path = parts.slice(4).join("/");
      const file = commit.files.get(path);
      if (!file) return this.#error(404, "EntryNotFound", `Entry not found: ${path}`);
      const size = file.bytes.length;
      const headers: Record<string, string> = {
        "ETag": `"${size >= LFS_THRESHOLD ? file.sha256 : file.gitOid}"`,
        "X-Repo-Commit": commit.sha,
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
      };
      let [start, end] = [0, size - 1];
      const range = req.headers.get("range")?.match(/^bytes=(\d+)-(\d*)$/);
      if (range) {
        start = Number(range[1]);
        end = range[2] ? Math.min(Number(range[2]), size - 1) : size - 1;
        headers["Content-Range"] = `bytes ${start}-${end}/${size}`;
      }
      return new Response(this.#body(file.bytes.subarray(start, end + 1)), {
        status: range ? 206 : 200,
        headers,
      });
    }
    return this.#error(404, "NotFound", `no route ${url.pathname}`);
  }

  #body(bytes: Uint8Array): ReadableStream<Uint8Array> | Uint8Array<ArrayBuffer> {
    const cut = this.faults.cutAfterBytes;
    if (cut === undefined || bytes.length <= 1) return bytes.slice();
    let sent = false;
    return new ReadableStream({
      pull(controller) {
        if (!sent) {
          controller.enqueue(bytes.slice(0, Math.min(cut, bytes.length)));
          sent = true;
        } else {
          controller.error(new Error("connection cut by the fake hub"));
        }
      },
    });
  }
}
