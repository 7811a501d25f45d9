/**
 * The agent's REST API: health, readiness, Prometheus metrics and a small
 * JSON API (`/v1/...`) for the CLI and operators. The OpenAPI document is
 * `lib/openapi.json`; a test keeps it equal to `API_ROUTES`.
 *
 * Served on a unix socket (mode 0600, root): the socket is bound inside a
 * private (0700) folder, set to 0600 and only then renamed into place, so
 * no other user can ever connect. Optionally also on TCP, only with a
 * bearer token file; requests without the token get 401. Beside the API
 * socket, a datagram socket (`<socket>.report`, 0600) takes the plugin's
 * outcome reports.
 *
 * @module
 */
import { collectStale, DEFAULT_GC_MIN_AGE_SECONDS, type IpamView, listAllocations, poolGauges } from "./allocations.ts";
import { reportSocketPath } from "./agentclient.ts";
import { closeFd, tryLockFile, UnixDatagramReceiver } from "./libc.ts";
import { configureLog, isLogLevel, log, logLevel } from "./log.ts";
import { type AgentCounters, zeroCounters } from "./agentstate.ts";
import { AgentMetrics } from "./metrics.ts";
import openapi from "./openapi.json" with { type: "json" };

/** What `/readyz` reports. */
export interface Readiness {
  ready: boolean;
  /** Why the node is not ready (or "synced"). */
  reason: string;
  /** Further facts for people (pod CIDRs, routes, problems ...). */
  [key: string]: unknown;
}

/** What the agent hands the API: plain views of its state. */
export interface ApiSource {
  /** Ready = pod CIDR known, conflist written, routes reconciled. */
  readiness(): Readiness;
  /** Node, pod CIDRs, bridge, MTU, sync state (`/v1/status`). */
  status(): Record<string, unknown>;
  /** The Nodes the agent knows, summarized (`/v1/nodes`). */
  nodes(): unknown[];
  /** The routes the agent keeps (`/v1/routes`). */
  routes(): unknown[];
  /** The agent's effective settings (`/v1/config`). */
  config(): Record<string, unknown>;
  /** The IPAM store the conflist points at; null before the conflist is written. */
  ipam(): IpamView | null;
  /** The agent's own counters (reconciles, route changes, watch restarts ...). */
  counters(): AgentCounters;
  /** Reconcile durations and the plugin's reports. */
  metrics(): AgentMetrics;
}

/** A source that knows only readiness (everything else empty), for tools and tests. */
export function readinessOnlySource(readiness: () => Readiness): ApiSource {
  const metrics = new AgentMetrics();
  return {
    readiness,
    status: () => ({ ...readiness() }),
    nodes: () => [],
    routes: () => [],
    config: () => ({}),
    ipam: () => null,
    counters: () => zeroCounters(),
    metrics: () => metrics,
  };
}

/** TCP listener settings; the token file is required. */
export interface TcpOptions {
  hostname: string;
  port: number;
  /** A file holding the bearer token (its first line). */
  tokenFile: string;
}

/** A running API server. */
export interface ApiServer {
  /** The socket path. */
  readonly path: string;
  /** The TCP port when listening on TCP. */
  readonly port?: number;
  /** Takes queued plugin reports now (also done periodically and on every scrape). */
  drainReports(): void;
  /** Stops serving and removes the sockets. */
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

/** The longest path a unix socket client can connect to: sun_path is 108 bytes with its NUL. */
const MAX_SUN_PATH_BYTES = 107;

/** The largest request body accepted (PUT/POST); larger gets 413. */
export const MAX_BODY_BYTES = 64 * 1024;

/** A request the API refuses, with its HTTP status and error code. */
export class ApiError extends Error {
  /** HTTP status. */
  readonly status: number;
  /** Machine-readable code, e.g. "not_found". */
  readonly code: string;
  /** Extra headers (Allow on 405, WWW-Authenticate on 401). */
  readonly headers: Record<string, string>;
  /** Makes an error. */
  constructor(status: number, code: string, message: string, headers: Record<string, string> = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.headers = headers;
  }
}

type Handler = (request: Request, url: URL, source: ApiSource) => Promise<Response> | Response;

/** One endpoint: method, path and handler. */
interface Route {
  method: "GET" | "POST" | "PUT";
  path: string;
  handler: Handler;
}

function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body, null, 2) + "\n", {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

function errorResponse(err: ApiError): Response {
  return json(err.status, { error: { code: err.code, message: err.message } }, err.headers);
}

async function readBody(request: Request): Promise<string> {
  const declared = Number(request.headers.get("content-length") ?? "0");
  if (declared > MAX_BODY_BYTES) {
    throw new ApiError(413, "payload_too_large", `request body of ${declared} bytes exceeds ${MAX_BODY_BYTES}`);
  }
  if (!request.body) return "";
  const chunks: Uint8Array[] = [];
  let total = 0;
  for await (const chunk of request.body) {
    total += chunk.length;
    if (total > MAX_BODY_BYTES) {
      throw new ApiError(413, "payload_too_large", `request body exceeds ${MAX_BODY_BYTES} bytes`);
    }
    chunks.push(chunk);
  }
  const all = new Uint8Array(total);
  let offset = 0;
  for (const c of chunks) {
    all.set(c, offset);
    offset += c.length;
  }
  return new TextDecoder().decode(all);
}

async function readJson(request: Request): Promise<Record<string, unknown>> {
  const text = await readBody(request);
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new ApiError(400, "bad_json", `request body is not JSON: ${(err as Error).message}`);
  }
  if (doc === null || typeof doc !== "object" || Array.isArray(doc)) {
    throw new ApiError(400, "bad_request", "request body must be a JSON object");
  }
  return doc as Record<string, unknown>;
}

function requireIpam(source: ApiSource): IpamView {
  const view = source.ipam();
  if (!view) throw new ApiError(503, "not_ready", "the node has no pod CIDR yet, so there is no IPAM store");
  return view;
}

function metricsText(source: ApiSource): string {
  const view = source.ipam();
  let pools: { range: string; size: number; used: number }[] = [];
  try {
    pools = view ? poolGauges(view) : [];
  } catch (err) {
    log("warn", `metrics: cannot read the IPAM store: ${(err as Error).message}`);
  }
  return source.metrics().render({
    ready: source.readiness().ready,
    routesOwned: source.routes().length,
    pools,
    counters: source.counters(),
  });
}

function parseMinAge(url: URL): number {
  const value = url.searchParams.get("minAge");
  if (value === null) return DEFAULT_GC_MIN_AGE_SECONDS;
  if (!/^\d{1,7}$/.test(value)) {
    throw new ApiError(400, "bad_request", `minAge=${JSON.stringify(value).slice(0, 60)}: must be whole seconds`);
  }
  return Number(value);
}

function parseApply(url: URL): boolean {
  const value = url.searchParams.get("apply");
  if (value === null || value === "false" || value === "0") return false;
  if (value === "true" || value === "1") return true;
  throw new ApiError(400, "bad_request", `apply=${JSON.stringify(value).slice(0, 60)}: must be true or false`);
}

const ROUTES: Route[] = [
  { method: "GET", path: "/healthz", handler: () => json(200, { status: "ok" }) },
  {
    method: "GET",
    path: "/readyz",
    handler: (_r, _u, source) => {
      const readiness = source.readiness();
      return json(readiness.ready ? 200 : 503, readiness);
    },
  },
  {
    method: "GET",
    path: "/metrics",
    handler: (_r, _u, source) =>
      new Response(metricsText(source), { headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" } }),
  },
  { method: "GET", path: "/v1/openapi.json", handler: () => json(200, openapi) },
  { method: "GET", path: "/v1/status", handler: (_r, _u, source) => json(200, source.status()) },
  {
    method: "GET",
    path: "/v1/allocations",
    handler: (_r, _u, source) => {
      const view = requireIpam(source);
      return json(200, { network: view.network, dataDir: view.dataDir, allocations: listAllocations(view) });
    },
  },
  { method: "GET", path: "/v1/routes", handler: (_r, _u, source) => json(200, { routes: source.routes() }) },
  { method: "GET", path: "/v1/nodes", handler: (_r, _u, source) => json(200, { nodes: source.nodes() }) },
  {
    method: "GET",
    path: "/v1/config",
    handler: (_r, _u, source) => json(200, { ...source.config(), logLevel: logLevel() }),
  },
  {
    method: "POST",
    path: "/v1/gc",
    handler: (_r, url, source) => {
      const apply = parseApply(url);
      const outcome = collectStale(requireIpam(source), apply, parseMinAge(url));
      if (outcome.released.length > 0) {
        log("info", "GC released stale reservations", {
          released: outcome.released.map((r) => `${r.containerId}/${r.ifname}`),
        });
      }
      return json(200, outcome);
    },
  },
  {
    method: "PUT",
    path: "/v1/config/log-level",
    handler: async (request) => {
      const body = await readJson(request);
      if (!isLogLevel(body.level)) {
        throw new ApiError(400, "bad_request", `level: must be one of debug, info, warn, error`);
      }
      const was = logLevel();
      configureLog({ level: body.level });
      log("info", `log level set to ${body.level}`, { was });
      return json(200, { level: body.level, was });
    },
  },
];

/** Every endpoint as `METHOD path` (what the OpenAPI document must describe). */
export const API_ROUTES: readonly string[] = ROUTES.map((r) => `${r.method} ${r.path}`);

/** Answers one request (exported for tests); never throws. */
export async function handleApiRequest(request: Request, source: ApiSource): Promise<Response> {
  const url = new URL(request.url);
  try {
    const candidates = ROUTES.filter((r) => r.path === url.pathname);
    if (candidates.length === 0) throw new ApiError(404, "not_found", `no such endpoint ${url.pathname}`);
    const method = request.method === "HEAD" ? "GET" : request.method;
    const route = candidates.find((r) => r.method === method);
    if (!route) {
      const allow = candidates.map((r) => r.method).join(", ");
      throw new ApiError(405, "method_not_allowed", `${request.method} ${url.pathname}: use ${allow}`, { allow });
    }
    const declared = Number(request.headers.get("content-length") ?? "0");
    if (declared > MAX_BODY_BYTES) {
      throw new ApiError(413, "payload_too_large", `request body of ${declared} bytes exceeds ${MAX_BODY_BYTES}`);
    }
    const response = await route.handler(request, url, source);
    return request.method === "HEAD" ? new Response(null, response) : response;
  } catch (err) {
    if (err instanceof ApiError) return errorResponse(err);
    log("error", `API ${request.method} ${url.pathname}: ${(err as Error).message}`);
    return errorResponse(new ApiError(500, "internal", (err as Error).message));
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

function removeStale(path: string): void {
  try {
    Deno.removeSync(path);
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
}

/** Binds in a private folder, sets 0600, renames into place. */
function bindPrivately<T>(dir: string, path: string, bind: (bound: string) => T): T {
  const privateDir = Deno.makeTempDirSync({ dir, prefix: ".api-" });
  try {
    Deno.chmodSync(privateDir, 0o700);
    const bound = `${privateDir}/s`;
    const handle = bind(bound);
    Deno.chmodSync(bound, 0o600);
    Deno.renameSync(bound, path);
    return handle;
  } finally {
    Deno.removeSync(privateDir, { recursive: true });
  }
}

/** Reads the token file; throws when it is missing, empty or readable by others. */
export function readTokenFile(path: string): string {
  const info = Deno.statSync(path);
  if (((info.mode ?? 0) & 0o077) !== 0) {
    throw new Error(`--api-token-file ${path} must not be readable by group or others (chmod 600)`);
  }
  const token = Deno.readTextFileSync(path).split("\n")[0].trim();
  if (token.length < 16) throw new Error(`--api-token-file ${path}: the token must be at least 16 characters`);
  return token;
}

async function sha256(text: string): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text)));
}

/** True when `given` equals the token whose SHA-256 is `want`, in constant time. */
export async function tokenMatches(given: string, want: Uint8Array): Promise<boolean> {
  const got = await sha256(given);
  let diff = got.length ^ want.length;
  for (let i = 0; i < want.length; i++) diff |= got[i] ^ want[i];
  return diff === 0;
}

function bearerHandler(tokenDigest: Uint8Array, source: ApiSource) {
  return async (request: Request): Promise<Response> => {
    const header = request.headers.get("authorization") ?? "";
    const match = /^Bearer +(\S+)\s*$/i.exec(header);
    if (!match || !(await tokenMatches(match[1], tokenDigest))) {
      return errorResponse(
        new ApiError(401, "unauthorized", "a valid bearer token is required", { "www-authenticate": "Bearer" }),
      );
    }
    return handleApiRequest(request, source);
  };
}

/** How long a listener whose accept loop failed waits before it listens again. */
export const RELISTEN_DELAY_MS = 1000;

function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => (clearTimeout(timer), resolve()), { once: true });
  });
}

/**
 * Keeps a listener serving until `signal` aborts. An accept loop that fails
 * (out of file descriptors under a connection flood) rejects its
 * `finished`; unhandled, that would end the agent. Instead it is logged and
 * the listener started again after a pause, until that succeeds.
 */
async function keepServing(
  what: string,
  first: Deno.HttpServer,
  start: () => Deno.HttpServer,
  signal: AbortSignal,
): Promise<void> {
  let server = first;
  while (true) {
    try {
      await server.finished;
    } catch (err) {
      if (!signal.aborted) log("error", `API on ${what} stopped listening: ${(err as Error).message}`);
    }
    while (true) {
      if (signal.aborted) return;
      await pause(RELISTEN_DELAY_MS, signal);
      if (signal.aborted) return;
      try {
        server = start();
        log("info", `API on ${what} listening again`);
        break;
      } catch (err) {
        log("warn", `API on ${what}: cannot listen again yet: ${(err as Error).message}`);
      }
    }
  }
}

/**
 * Serves the API on the unix socket `path` (and TCP when `options.tcp` is
 * set). A stale socket file is replaced; a live one (another agent) is an
 * error.
 */
export async function startApiServer(
  path: string,
  source: ApiSource,
  options: { tcp?: TcpOptions } = {},
): Promise<ApiServer> {
  if (new TextEncoder().encode(reportSocketPath(path)).length > MAX_SUN_PATH_BYTES) {
    throw new Error(
      `${path} is too long for a unix socket (at most ${
        MAX_SUN_PATH_BYTES - ".report".length
      } bytes, so that ${path}.report fits too)`,
    );
  }
  const dir = path.slice(0, path.lastIndexOf("/")) || "/";
  Deno.mkdirSync(dir, { recursive: true, mode: 0o755 });
  // Held while serving: two agents started at once would both find no
  // live socket, and the later rename would orphan the first one's.
  const lockFd = tryLockFile(`${path}.lock`);
  if (lockFd === null) throw new SocketInUseError(path);
  try {
    return await serveLocked(path, dir, source, options, lockFd);
  } catch (err) {
    closeFd(lockFd);
    throw err;
  }
}

async function serveLocked(
  path: string,
  dir: string,
  source: ApiSource,
  options: { tcp?: TcpOptions },
  lockFd: number,
): Promise<ApiServer> {
  try {
    if (!Deno.lstatSync(path).isSocket) throw new Error(`${path} exists and is not a socket; refusing to replace it`);
    if (await socketIsLive(path)) throw new SocketInUseError(path);
    Deno.removeSync(path);
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  const tokenDigest = options.tcp ? await sha256(readTokenFile(options.tcp.tokenFile)) : undefined;
  const abort = new AbortController();
  const serving: Promise<void>[] = [];
  const cleanups: (() => void)[] = [];
  let receiver: UnixDatagramReceiver | undefined;
  const drainReports = () => {
    if (!receiver) return;
    for (let i = 0; i < 10_000; i++) {
      let datagram: Uint8Array | null;
      try {
        datagram = receiver.receive();
      } catch (err) {
        log("warn", `plugin reports: ${(err as Error).message}`);
        return;
      }
      if (datagram === null) return;
      try {
        source.metrics().recordReport(datagram);
      } catch (err) {
        log("debug", `plugin report dropped: ${(err as Error).message}`);
      }
    }
  };
  // Every read of the counters takes the queued reports first, so a scrape is current.
  const scraping: ApiSource = {
    readiness: () => source.readiness(),
    status: () => source.status(),
    nodes: () => source.nodes(),
    routes: () => source.routes(),
    config: () => source.config(),
    ipam: () => source.ipam(),
    counters: () => source.counters(),
    metrics: () => (drainReports(), source.metrics()),
  };
  try {
    const serveUnix = () =>
      bindPrivately(dir, path, (bound) =>
        Deno.serve(
          { path: bound, transport: "unix", signal: abort.signal, onListen() {} },
          (request) => handleApiRequest(request, scraping),
        ));
    serving.push(keepServing(path, serveUnix(), serveUnix, abort.signal));
    cleanups.push(() => removeStale(path));
    const reportPath = reportSocketPath(path);
    removeStale(reportPath);
    receiver = bindPrivately(dir, reportPath, (bound) => new UnixDatagramReceiver(bound));
    cleanups.push(() => {
      receiver?.close();
      removeStale(reportPath);
    });
    let port: number | undefined;
    if (options.tcp && tokenDigest) {
      const { hostname } = options.tcp;
      const serveTcp = (port: number) =>
        Deno.serve({ hostname, port, signal: abort.signal, onListen() {} }, bearerHandler(tokenDigest, scraping));
      const tcp = serveTcp(options.tcp.port);
      const bound = (tcp.addr as Deno.NetAddr).port;
      port = bound;
      serving.push(keepServing(`${hostname}:${bound}`, tcp, () => serveTcp(bound), abort.signal));
      log("info", `API listening on ${options.tcp.hostname}:${port} (bearer token required)`);
    }
    const timer = setInterval(drainReports, 500);
    cleanups.push(() => clearInterval(timer));
    return {
      path,
      port,
      drainReports,
      async close() {
        abort.abort();
        await Promise.all(serving);
        for (const c of cleanups.reverse()) c();
        closeFd(lockFd);
      },
    };
  } catch (err) {
    abort.abort();
    for (const c of cleanups.reverse()) c();
    throw err;
  }
}
