/**
 * The agent's HTTP API on a unix socket (mode 0600): `GET /healthz` (the
 * process is alive) and `GET /readyz` (200 once the node is synced, else
 * 503 with a JSON reason). The plugin's STATUS asks `/readyz`.
 *
 * The socket is bound inside a private (0700) folder, set to 0600 and only
 * then renamed into place, so no other user can ever connect.
 *
 * @module
 */

/** What `/readyz` reports. */
export interface Readiness {
  ready: boolean;
  /** Why the node is not ready (or "synced"). */
  reason: string;
  /** Further facts for people (pod CIDRs, routes, problems ...). */
  [key: string]: unknown;
}

/** What the API serves. */
export interface ApiSource {
  readiness(): Readiness;
}

/** A running API server. */
export interface ApiServer {
  /** The socket path. */
  readonly path: string;
  /** Stops serving and removes the socket. */
  close(): Promise<void>;
}

/** The socket is held by a live process. */
export class SocketInUseError extends Error {
  /** Makes an error for `path`. */
  constructor(path: string) {
    super(`${path} is served by another running process (another agent?)`);
    this.name = "SocketInUseError";
  }
}

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body) + "\n", { status, headers: { "content-type": "application/json" } });
}

/** Answers one request (exported for tests). */
export function handleApiRequest(request: Request, source: ApiSource): Response {
  const path = new URL(request.url).pathname;
  if (request.method !== "GET" && request.method !== "HEAD") return json(405, { error: "method not allowed" });
  switch (path) {
    case "/healthz":
      return json(200, { status: "ok" });
    case "/readyz": {
      const readiness = source.readiness();
      return json(readiness.ready ? 200 : 503, readiness);
    }
    default:
      return json(404, { error: `no such endpoint ${path}` });
  }
}

async function socketIsLive(path: string): Promise<boolean> {
  try {
    const conn = await Deno.connect({ transport: "unix", path });
    conn.close();
    return true;
  } catch {
    return false;
  }
}

/**
 * Serves the API on the unix socket `path`. A stale socket file is
 * replaced; a live one (another agent) is an error.
 */
export async function startApiServer(path: string, source: ApiSource): Promise<ApiServer> {
  const dir = path.slice(0, path.lastIndexOf("/")) || "/";
  Deno.mkdirSync(dir, { recursive: true, mode: 0o755 });
  try {
    Deno.lstatSync(path);
    if (await socketIsLive(path)) throw new SocketInUseError(path);
    Deno.removeSync(path);
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  const privateDir = Deno.makeTempDirSync({ dir, prefix: ".api-" });
  Deno.chmodSync(privateDir, 0o700);
  const bound = `${privateDir}/api.sock`;
  const abort = new AbortController();
  let server: Deno.HttpServer<Deno.UnixAddr>;
  try {
    server = Deno.serve(
      { path: bound, transport: "unix", signal: abort.signal, onListen() {} },
      (request) => handleApiRequest(request, source),
    );
    Deno.chmodSync(bound, 0o600);
    Deno.renameSync(bound, path);
  } finally {
    Deno.removeSync(privateDir, { recursive: true });
  }
  return {
    path,
    async close() {
      abort.abort();
      await server.finished.catch(() => {});
      try {
        Deno.removeSync(path);
      } catch { /* already gone */ }
    },
  };
}
