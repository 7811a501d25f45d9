/**
 * Kubernetes API access for the node agent: where the API server is and how
 * to prove who we are (in-cluster service account or a kubeconfig), one
 * HTTP client that verifies the server against the cluster's CA, and Nodes
 * as list + watch (resource versions, bookmarks, relist on 410 Gone,
 * backoff on errors).
 *
 * Nothing insecure is offered: `insecure-skip-tls-verify` is refused and a
 * bearer token is never sent in clear text to a host other than loopback.
 *
 * @module
 */
import { parse as parseYaml } from "yaml";

/** Where the service account's credentials are mounted in a pod. */
export const SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount";

/** The fields of a Node the agent reads. */
export interface KubeNode {
  metadata: { name: string; resourceVersion?: string; uid?: string };
  spec?: { podCIDR?: string; podCIDRs?: string[] };
  status?: { addresses?: { type: string; address: string }[] };
}

/** How to reach and authenticate to one API server. */
export interface KubeTarget {
  /** Base URL, e.g. `https://10.0.0.1:6443` (no trailing slash). */
  server: string;
  /** PEM of the CA(s) that sign the server's certificate; system roots when absent. */
  caCert?: string;
  /** A bearer token. */
  token?: string;
  /** A file holding the bearer token, re-read on every request (bound tokens rotate). */
  tokenFile?: string;
  /** PEM client certificate (with `clientKey`). */
  clientCert?: string;
  /** PEM client key. */
  clientKey?: string;
  /** Where this came from, for logs ("in-cluster", "kubeconfig /path context x"). */
  source: string;
}

/** A kubeconfig or in-cluster setup that cannot be used; the message says why. */
export class KubeConfigError extends Error {
  /** Makes an error with `message`. */
  constructor(message: string) {
    super(message);
    this.name = "KubeConfigError";
  }
}

/** The API server answered with an error status (or could not be reached: status 0). */
export class KubeApiError extends Error {
  /** HTTP status, or 0 when no response came. */
  readonly status: number;
  /** The Status object's `reason` (e.g. "Expired"), when given. */
  readonly reason?: string;
  /** Makes an error with `status`, `message` and optional `reason`. */
  constructor(status: number, message: string, reason?: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "KubeApiError";
    this.status = status;
    this.reason = reason;
  }

  /** True for 410 Gone: the resource version is too old; relist. */
  get expired(): boolean {
    return this.status === 410;
  }
}

const decoder = new TextDecoder();

function readText(path: string, what: string): string {
  try {
    return decoder.decode(Deno.readFileSync(path));
  } catch (err) {
    throw new KubeConfigError(`${what}: cannot read ${path}: ${(err as Error).message}`);
  }
}

function hostForUrl(host: string): string {
  return host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
}

/**
 * The in-cluster target: `KUBERNETES_SERVICE_HOST`/`_PORT` and the service
 * account's token and CA under `dir`.
 */
export function inClusterTarget(env: Record<string, string | undefined>, dir = SERVICE_ACCOUNT_DIR): KubeTarget {
  const host = env.KUBERNETES_SERVICE_HOST;
  const port = env.KUBERNETES_SERVICE_PORT;
  if (!host || !port) {
    throw new KubeConfigError("not in a cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set");
  }
  const tokenFile = `${dir}/token`;
  readText(tokenFile, "service account token");
  return {
    server: `https://${hostForUrl(host)}:${port}`,
    caCert: readText(`${dir}/ca.crt`, "service account CA"),
    tokenFile,
    source: "in-cluster service account",
  };
}

type YamlMap = Record<string, unknown>;

function isMap(v: unknown): v is YamlMap {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function named(list: unknown, name: string, kind: string, field: string): YamlMap {
  const entry = Array.isArray(list) ? list.find((e) => isMap(e) && e.name === name) : undefined;
  if (!isMap(entry)) throw new KubeConfigError(`kubeconfig: ${kind} "${name}" not found`);
  const body = entry[field];
  if (!isMap(body)) throw new KubeConfigError(`kubeconfig: ${kind} "${name}" has no ${field} section`);
  return body;
}

function str(map: YamlMap, key: string, where: string): string | undefined {
  const v = map[key];
  if (v === undefined || v === null || v === "") return undefined;
  if (typeof v !== "string") throw new KubeConfigError(`kubeconfig: ${where}.${key} must be a string`);
  return v;
}

function resolvePath(path: string, baseDir: string): string {
  return path.startsWith("/") ? path : `${baseDir}/${path}`;
}

function base64Text(data: string, where: string): string {
  try {
    return decoder.decode(Uint8Array.from(atob(data.replace(/\s+/g, "")), (c) => c.charCodeAt(0)));
  } catch {
    throw new KubeConfigError(`kubeconfig: ${where} is not valid base64`);
  }
}

/** Inline `<key>-data` (base64) or a file named by `<key>`, relative to the kubeconfig. */
function pemOf(map: YamlMap, key: string, where: string, baseDir: string): string | undefined {
  const data = str(map, `${key}-data`, where);
  if (data !== undefined) return base64Text(data, `${where}.${key}-data`);
  const file = str(map, key, where);
  return file === undefined ? undefined : readText(resolvePath(file, baseDir), `${where}.${key}`);
}

/**
 * The target named by a kubeconfig's context (`context`, else
 * `current-context`). Files it names are read relative to `path`'s folder.
 *
 * @example
 * ```ts
 * const target = kubeconfigTarget(Deno.readTextFileSync("/etc/rancher/k3s/k3s.yaml"), "/etc/rancher/k3s/k3s.yaml");
 * ```
 */
export function kubeconfigTarget(text: string, path: string, context?: string): KubeTarget {
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    throw new KubeConfigError(`kubeconfig ${path}: not valid YAML: ${(err as Error).message}`);
  }
  if (!isMap(doc)) throw new KubeConfigError(`kubeconfig ${path}: not a mapping`);
  const baseDir = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) || "/" : ".";
  const contextName = context ?? str(doc, "current-context", "kubeconfig");
  if (!contextName) throw new KubeConfigError(`kubeconfig ${path}: no current-context`);
  const ctx = named(doc.contexts, contextName, "context", "context");
  const clusterName = str(ctx, "cluster", `contexts[${contextName}]`);
  if (!clusterName) throw new KubeConfigError(`kubeconfig ${path}: context "${contextName}" names no cluster`);
  const cluster = named(doc.clusters, clusterName, "cluster", "cluster");
  const where = `clusters[${clusterName}]`;
  const server = str(cluster, "server", where)?.replace(/\/+$/, "");
  if (!server) throw new KubeConfigError(`kubeconfig ${path}: cluster "${clusterName}" has no server`);
  if (cluster["insecure-skip-tls-verify"] === true) {
    throw new KubeConfigError(
      `kubeconfig ${path}: cluster "${clusterName}" sets insecure-skip-tls-verify; Pontoon always verifies the API server (give certificate-authority-data)`,
    );
  }
  if (str(cluster, "tls-server-name", where)) {
    throw new KubeConfigError(`kubeconfig ${path}: ${where}.tls-server-name is not supported`);
  }
  const target: KubeTarget = {
    server,
    caCert: pemOf(cluster, "certificate-authority", where, baseDir),
    source: `kubeconfig ${path} (context ${contextName})`,
  };
  const userName = str(ctx, "user", `contexts[${contextName}]`);
  if (userName) Object.assign(target, userCredentials(named(doc.users, userName, "user", "user"), userName, baseDir));
  return target;
}

function userCredentials(user: YamlMap, name: string, baseDir: string): Partial<KubeTarget> {
  const where = `users[${name}]`;
  for (const unsupported of ["exec", "auth-provider", "username"]) {
    if (user[unsupported] !== undefined) {
      throw new KubeConfigError(
        `kubeconfig: ${where}.${unsupported} is not supported; use a token, a token file or a client certificate`,
      );
    }
  }
  const out: Partial<KubeTarget> = {};
  const token = str(user, "token", where);
  const tokenFile = str(user, "tokenFile", where);
  if (token) out.token = token;
  else if (tokenFile) {
    out.tokenFile = resolvePath(tokenFile, baseDir);
    readText(out.tokenFile, `${where}.tokenFile`);
  }
  const cert = pemOf(user, "client-certificate", where, baseDir);
  const key = pemOf(user, "client-key", where, baseDir);
  if ((cert === undefined) !== (key === undefined)) {
    throw new KubeConfigError(`kubeconfig: ${where} needs both client-certificate and client-key`);
  }
  if (cert && key) {
    out.clientCert = cert;
    out.clientKey = key;
  }
  return out;
}

/**
 * Chooses the target: `--kubeconfig` when given, else the in-cluster
 * service account, else `$KUBECONFIG`.
 */
export function loadKubeTarget(kubeconfig: string | undefined, env: Record<string, string | undefined>): KubeTarget {
  if (kubeconfig) return kubeconfigTarget(readText(kubeconfig, "kubeconfig"), kubeconfig);
  if (env.KUBERNETES_SERVICE_HOST) return inClusterTarget(env);
  const fromEnv = env.KUBECONFIG?.split(":")[0];
  if (fromEnv) return kubeconfigTarget(readText(fromEnv, "kubeconfig"), fromEnv);
  throw new KubeConfigError("no Kubernetes API: pass --kubeconfig PATH, or run in a pod with a service account");
}

function isLoopback(host: string): boolean {
  return host === "localhost" || host === "[::1]" || /^127\./.test(host);
}

/** Explains a failed fetch in one line, with a hint for the common causes. */
export function describeFetchError(err: unknown, server: string): string {
  const parts: string[] = [];
  for (let e: unknown = err; e instanceof Error && parts.length < 4; e = e.cause) parts.push(e.message);
  const text = parts.join(": ");
  if (/UnknownIssuer|certificate|BadSignature|NotValidForName|CertExpired/i.test(text)) {
    return `TLS verification of ${server} failed (is the CA right for this server?): ${text}`;
  }
  if (/Connection refused|os error 111/i.test(text)) return `${server} refused the connection: ${text}`;
  if (/timed out|os error 110|No route to host|unreachable/i.test(text)) return `${server} is unreachable: ${text}`;
  return `request to ${server} failed: ${text}`;
}

/** How long a request may wait for the response headers. */
export const REQUEST_TIMEOUT_MS = 30_000;

/** A client for one API server; holds the TLS client, so `close()` it. */
export class KubeClient {
  /** The target this client talks to. */
  readonly target: KubeTarget;
  readonly #http: Deno.HttpClient;

  /** Makes a client; the CA and client certificate are loaded now. */
  constructor(target: KubeTarget) {
    const url = new URL(target.server);
    if (url.protocol !== "https:" && url.protocol !== "http:") {
      throw new KubeConfigError(`server ${target.server}: only https:// (or http:// on loopback) is supported`);
    }
    const hasToken = target.token !== undefined || target.tokenFile !== undefined;
    if (url.protocol === "http:" && hasToken && !isLoopback(url.hostname)) {
      throw new KubeConfigError(`server ${target.server}: refusing to send a bearer token over plain http`);
    }
    this.target = target;
    const options: Deno.CreateHttpClientOptions = {};
    if (target.caCert) options.caCerts = [target.caCert];
    const identity = target.clientCert && target.clientKey
      ? { cert: target.clientCert, key: target.clientKey }
      : undefined;
    try {
      this.#http = Deno.createHttpClient(identity ? { ...options, ...identity } : options);
    } catch (err) {
      throw new KubeConfigError(`${target.source}: bad CA or client certificate: ${(err as Error).message}`);
    }
  }

  #headers(): Headers {
    const headers = new Headers({ Accept: "application/json", "User-Agent": "pontoon-agent" });
    let token = this.target.token;
    if (this.target.tokenFile) token = readText(this.target.tokenFile, "token file").trim();
    if (token) headers.set("Authorization", `Bearer ${token}`);
    return headers;
  }

  /**
   * Sends `GET path`; throws KubeApiError on a non-2xx answer, a network
   * failure, or when no response headers came within `headersTimeoutMs`
   * (a silently dropped connection would otherwise hang for minutes). The
   * body is not under that timeout, so a watch can stream for long.
   */
  async get(path: string, signal?: AbortSignal, headersTimeoutMs = REQUEST_TIMEOUT_MS): Promise<Response> {
    const url = this.target.server + path;
    const late = new AbortController();
    const timer = setTimeout(() => late.abort(), headersTimeoutMs);
    let response: Response;
    try {
      response = await fetch(url, {
        headers: this.#headers(),
        client: this.#http,
        signal: signal ? AbortSignal.any([signal, late.signal]) : late.signal,
      });
    } catch (err) {
      if (signal?.aborted) throw err;
      const why = late.signal.aborted
        ? `${this.target.server} did not answer within ${headersTimeoutMs / 1000}s (unreachable?)`
        : describeFetchError(err, this.target.server);
      throw new KubeApiError(0, why, undefined, { cause: err });
    } finally {
      clearTimeout(timer);
    }
    if (!response.ok) throw await apiError(response, path);
    return response;
  }

  /** Sends `GET path` and parses the JSON answer. */
  async getJson<T>(path: string, signal?: AbortSignal): Promise<T> {
    const response = await this.get(path, signal);
    return await response.json() as T;
  }

  /** Releases the HTTP client. */
  close(): void {
    this.#http.close();
  }
}

async function apiError(response: Response, path: string): Promise<KubeApiError> {
  const text = await response.text().catch(() => "");
  let message = text.trim().slice(0, 300);
  let reason: string | undefined;
  try {
    const status = JSON.parse(text);
    if (typeof status?.message === "string") message = status.message;
    if (typeof status?.reason === "string") reason = status.reason;
  } catch { /* not a Status object */ }
  const hint = response.status === 401
    ? " (the token or client certificate was rejected)"
    : response.status === 403
    ? " (RBAC: the agent needs list and watch on nodes)"
    : "";
  return new KubeApiError(
    response.status,
    `GET ${path}: HTTP ${response.status}${hint}${message ? `: ${message}` : ""}`,
    reason,
  );
}

// ------------------------------------------------------------ nodes

/** A list of Nodes and the resource version to watch from. */
export interface NodeList {
  nodes: KubeNode[];
  resourceVersion: string;
}

/** Lists all Nodes, following `continue` tokens page by page. */
export async function listNodes(client: KubeClient, signal?: AbortSignal, pageSize = 500): Promise<NodeList> {
  const nodes: KubeNode[] = [];
  let token = "";
  for (;;) {
    const query = `limit=${pageSize}${token ? `&continue=${encodeURIComponent(token)}` : ""}`;
    const page = await client.getJson<
      { items?: KubeNode[]; metadata?: { resourceVersion?: string; continue?: string } }
    >(
      `/api/v1/nodes?${query}`,
      signal,
    );
    nodes.push(...(page.items ?? []));
    token = page.metadata?.continue ?? "";
    if (!token) return { nodes, resourceVersion: page.metadata?.resourceVersion ?? "" };
  }
}

/** The longest watch line (one event) taken by default: a Node is far smaller. */
export const MAX_WATCH_LINE = 16 * 1024 * 1024;

/** One watch event. ERROR events are turned into thrown KubeApiErrors. */
export interface NodeEvent {
  type: "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK";
  node: KubeNode;
}

/** Options for one watch request. */
export interface WatchOptions {
  /** Server-side timeout of the request. */
  timeoutSeconds?: number;
  /** Abort the request when no byte came for this long (a dead connection). */
  idleMs?: number;
  /** Give up on a line (one event) longer than this, so a broken stream cannot eat the memory. */
  maxLineLength?: number;
  signal?: AbortSignal;
}

/**
 * Watches Nodes from `resourceVersion` (with bookmarks) and yields events
 * until the server ends the stream. Throws KubeApiError (`expired` for 410).
 */
export async function* watchNodes(
  client: KubeClient,
  resourceVersion: string,
  options: WatchOptions = {},
): AsyncGenerator<NodeEvent> {
  const timeout = options.timeoutSeconds ?? 300;
  const idle = new AbortController();
  const signal = options.signal ? AbortSignal.any([options.signal, idle.signal]) : idle.signal;
  const idleMs = options.idleMs ?? (timeout + 30) * 1000;
  const maxLine = options.maxLineLength ?? MAX_WATCH_LINE;
  let timer = setTimeout(() => idle.abort(), idleMs);
  const path = `/api/v1/nodes?watch=1&allowWatchBookmarks=true&timeoutSeconds=${timeout}` +
    `&resourceVersion=${encodeURIComponent(resourceVersion)}`;
  try {
    const response = await client.get(path, signal);
    if (!response.body) return;
    let buffer = "";
    const textDecoder = new TextDecoder();
    try {
      for await (const chunk of response.body) {
        clearTimeout(timer);
        timer = setTimeout(() => idle.abort(), idleMs);
        buffer += textDecoder.decode(chunk, { stream: true });
        let newline: number;
        while ((newline = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, newline).trim();
          buffer = buffer.slice(newline + 1);
          if (line !== "") yield parseWatchLine(line);
        }
        if (buffer.length > maxLine) {
          throw new KubeApiError(0, `watch stream sent a line longer than ${maxLine} characters (no newline)`);
        }
      }
    } catch (err) {
      if (options.signal?.aborted) throw err;
      if (err instanceof KubeApiError) throw err;
      const why = idle.signal.aborted ? `no data for ${idleMs / 1000}s` : describeFetchError(err, client.target.server);
      throw new KubeApiError(0, `watch stream broke: ${why}`, undefined, { cause: err });
    }
  } finally {
    clearTimeout(timer);
  }
}

/** Parses one line of a watch stream; throws KubeApiError for ERROR events. */
export function parseWatchLine(line: string): NodeEvent {
  let event: { type?: string; object?: Record<string, unknown> };
  try {
    event = JSON.parse(line);
  } catch {
    throw new KubeApiError(0, `watch stream sent a line that is not JSON: ${line.slice(0, 120)}`);
  }
  const { type, object } = event;
  if (type === "ERROR") {
    const code = typeof object?.code === "number" ? object.code : 0;
    const message = typeof object?.message === "string" ? object.message : JSON.stringify(object);
    const reason = typeof object?.reason === "string" ? object.reason : undefined;
    throw new KubeApiError(code, `watch: ${message}`, reason);
  }
  if (type !== "ADDED" && type !== "MODIFIED" && type !== "DELETED" && type !== "BOOKMARK") {
    throw new KubeApiError(0, `watch stream sent unknown event type ${JSON.stringify(type)}`);
  }
  const meta = object?.metadata as KubeNode["metadata"] | undefined;
  if (!meta || (type !== "BOOKMARK" && typeof meta.name !== "string")) {
    throw new KubeApiError(0, `watch ${type} event without metadata.name`);
  }
  return { type, node: object as unknown as KubeNode };
}

/**
 * The delay before retry number `attempt` (1-based): exponential from
 * `minMs`, capped at `maxMs`, with ±20 % jitter so many agents do not
 * hit a recovering API server in step.
 */
export function backoffDelay(attempt: number, minMs: number, maxMs: number, random = Math.random): number {
  const base = Math.min(maxMs, minMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(base * (0.8 + 0.4 * random()));
}

/** What an informer reports. */
export interface InformerHandlers {
  /** A full, fresh list (at start and after a relist). */
  onList(nodes: KubeNode[]): void;
  /** One change after the list. */
  onEvent(event: NodeEvent): void;
  /** A failure; the informer retries after `retryInMs`. */
  onError(err: Error, retryInMs: number): void;
  /** The watch expired (410) and a relist follows. */
  onExpired?(err: KubeApiError): void;
}

/** Timing of an informer. */
export interface InformerOptions {
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** Server-side timeout of each watch request (seconds). */
  watchTimeoutSeconds?: number;
  signal?: AbortSignal;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}

/**
 * Keeps a view of all Nodes: list, then watch from the list's resource
 * version, forever. Bookmarks advance the resource version; a 410 Gone
 * means a fresh list; every other failure is retried with backoff. Never
 * returns until `signal` aborts, whatever the API server does.
 */
export async function runNodeInformer(
  client: KubeClient,
  handlers: InformerHandlers,
  options: InformerOptions = {},
): Promise<void> {
  const { signal } = options;
  const minMs = options.minBackoffMs ?? 500;
  const maxMs = options.maxBackoffMs ?? 30_000;
  let resourceVersion: string | undefined;
  let failures = 0;
  let lastExpiredAt = 0;
  while (!signal?.aborted) {
    try {
      if (resourceVersion === undefined) {
        const list = await listNodes(client, signal);
        handlers.onList(list.nodes);
        resourceVersion = list.resourceVersion;
        // failures is reset by the first watch event: a list that works
        // while every watch fails must still back off.
      }
      const started = Date.now();
      let events = 0;
      for await (
        const event of watchNodes(client, resourceVersion, { timeoutSeconds: options.watchTimeoutSeconds, signal })
      ) {
        events++;
        if (event.node.metadata?.resourceVersion) resourceVersion = event.node.metadata.resourceVersion;
        if (event.type !== "BOOKMARK") handlers.onEvent(event);
        failures = 0;
      }
      // A stream the server ends at once, again and again, must not spin.
      if (events === 0 && Date.now() - started < 1000) {
        failures++;
        await sleep(backoffDelay(failures, minMs, maxMs), signal);
      }
    } catch (err) {
      if (signal?.aborted) break;
      if (err instanceof KubeApiError && err.expired && resourceVersion !== undefined) {
        handlers.onExpired?.(err);
        resourceVersion = undefined;
        // A relist is due at once, unless 410s come back to back (a
        // server that expires every fresh version must not be hammered).
        if (Date.now() - lastExpiredAt < 1000) await sleep(backoffDelay(++failures, minMs, maxMs), signal);
        lastExpiredAt = Date.now();
        continue;
      }
      failures++;
      const delay = backoffDelay(failures, minMs, maxMs);
      handlers.onError(err instanceof Error ? err : new Error(String(err)), delay);
      await sleep(delay, signal);
    }
  }
}
