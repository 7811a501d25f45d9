/**
 * An emulated Kubernetes API server for tests: the one emulated part of
 * Pontoon's test suite. It speaks the real protocol for Nodes over HTTPS
 * with a CA the test generates (openssl CLI) and bearer-token auth:
 *
 * - `GET /api/v1/nodes` — a NodeList with `metadata.resourceVersion`;
 *   `limit` and `continue` page through it.
 * - `GET /api/v1/nodes/NAME` — one Node, or a 404 Status.
 * - `GET /api/v1/nodes?watch=1&resourceVersion=RV` — newline-delimited JSON
 *   watch events (ADDED, MODIFIED, DELETED, and BOOKMARK when
 *   `allowWatchBookmarks=true`), replaying everything after RV first. An RV
 *   older than the last compaction gets `410 Gone`: by default as a watch
 *   `ERROR` event carrying a Status object (what kube-apiserver does), or as
 *   an HTTP 410 answer (`expiredAs: "http"`). No RV (or "0") starts with a
 *   synthetic ADDED per existing Node, as the real server does.
 * - Anything else is a 404 Status; a missing or wrong token is a 401 Status.
 *
 * Test-side controls change Nodes (each change bumps the resource version
 * and reaches open watches), stop and start the server on the same port,
 * compact the history so old resource versions become stale, expire open
 * watches, inject HTTP failures, and count requests.
 *
 * @example
 * ```ts
 * const api = await KubeApiServer.start({ dir: "/tmp/x" });
 * try {
 *   api.setNode(testNode("n1", { podCIDRs: ["10.1.0.0/24"], internalIPs: ["192.0.2.1"] }));
 *   Deno.writeTextFileSync("/tmp/x/kubeconfig", api.kubeconfig());
 *   // ... run the agent with --kubeconfig /tmp/x/kubeconfig ...
 * } finally {
 *   await api.close();
 * }
 * ```
 *
 * @module
 */

/** A Node as the emulated server stores it (only what the agent reads, plus metadata). */
export interface ApiNode {
  apiVersion?: string;
  kind?: string;
  metadata: {
    name: string;
    uid?: string;
    resourceVersion?: string;
    creationTimestamp?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
  };
  spec?: { podCIDR?: string; podCIDRs?: string[]; unschedulable?: boolean };
  status?: { addresses?: { type: string; address: string }[] };
}

/** A watch event type the server sends. */
export type WatchEventType = "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK" | "ERROR";

/** Files of a generated test PKI (all PEM). */
export interface TestPki {
  /** The folder holding the files. */
  dir: string;
  /** The CA certificate's path. */
  caCertPath: string;
  /** The CA certificate (PEM text). */
  caCert: string;
  /** The server certificate's path (signed by the CA). */
  serverCertPath: string;
  /** The server's PKCS#8 private key path. */
  serverKeyPath: string;
}

/** Options for {@link makeTestPki}. */
export interface PkiOptions {
  /** Extra IP addresses for the server certificate (127.0.0.1 and ::1 are always in). */
  ips?: string[];
  /** Extra DNS names for the server certificate ("localhost" is always in). */
  dnsNames?: string[];
  /** The CA's common name (distinct CAs for wrong-CA tests). */
  caName?: string;
}

const decoder = new TextDecoder();
const encoder = new TextEncoder();

async function openssl(args: string[]): Promise<void> {
  const out = await new Deno.Command("openssl", { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) throw new Error(`openssl ${args.join(" ")}: ${decoder.decode(out.stderr)}`);
}

/**
 * Generates a CA and a server certificate for it (ECDSA P-256, valid one
 * day) in `dir`, with the loopback addresses and `options` as SANs.
 */
export async function makeTestPki(dir: string, options: PkiOptions = {}): Promise<TestPki> {
  Deno.mkdirSync(dir, { recursive: true });
  const p = (name: string) => `${dir}/${name}`;
  const caName = options.caName ?? "pontoon-test-ca";
  await openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", p("ca.key")]);
  await openssl([
    "req",
    "-x509",
    "-new",
    "-key",
    p("ca.key"),
    "-days",
    "1",
    "-subj",
    `/CN=${caName}`,
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
    "-out",
    p("ca.crt"),
  ]);
  await openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", p("server.key")]);
  await openssl(["req", "-new", "-key", p("server.key"), "-subj", "/CN=kube-apiserver", "-out", p("server.csr")]);
  const sans = [
    "DNS:localhost",
    ...(options.dnsNames ?? []).map((d) => `DNS:${d}`),
    "IP:127.0.0.1",
    "IP:::1",
    ...(options.ips ?? []).map((ip) => `IP:${ip}`),
  ];
  Deno.writeTextFileSync(
    p("server.ext"),
    [
      "basicConstraints=critical,CA:FALSE",
      "keyUsage=critical,digitalSignature",
      "extendedKeyUsage=serverAuth",
      `subjectAltName=${sans.join(",")}`,
    ].join("\n") + "\n",
  );
  await openssl([
    "x509",
    "-req",
    "-in",
    p("server.csr"),
    "-CA",
    p("ca.crt"),
    "-CAkey",
    p("ca.key"),
    "-CAcreateserial",
    "-days",
    "1",
    "-extfile",
    p("server.ext"),
    "-out",
    p("server.crt"),
  ]);
  return {
    dir,
    caCertPath: p("ca.crt"),
    caCert: Deno.readTextFileSync(p("ca.crt")),
    serverCertPath: p("server.crt"),
    serverKeyPath: p("server.key"),
  };
}

/** What {@link testNode} builds a Node from. */
export interface TestNodeSpec {
  /** `spec.podCIDRs` (and `spec.podCIDR` = the first). Omit for a Node not yet assigned one. */
  podCIDRs?: string[];
  /** InternalIP addresses (one per family). */
  internalIPs?: string[];
  /** Other addresses, e.g. `{ type: "Hostname", address: "n1" }`. */
  otherAddresses?: { type: string; address: string }[];
}

/** Builds a Node object with the given pod CIDRs and InternalIPs. */
export function testNode(name: string, spec: TestNodeSpec = {}): ApiNode {
  const node: ApiNode = { metadata: { name }, spec: {}, status: { addresses: [] } };
  if (spec.podCIDRs && spec.podCIDRs.length > 0) {
    node.spec = { podCIDR: spec.podCIDRs[0], podCIDRs: [...spec.podCIDRs] };
  }
  node.status!.addresses = [
    ...(spec.internalIPs ?? []).map((address) => ({ type: "InternalIP", address })),
    ...(spec.otherAddresses ?? [{ type: "Hostname", address: name }]),
  ];
  return node;
}

/** Options for {@link kubeconfigYaml}. */
export interface KubeconfigOptions {
  /** The API server URL. */
  server: string;
  /** The CA certificate (PEM), embedded as `certificate-authority-data`. */
  caCert?: string;
  /** A CA file path instead (`certificate-authority`). */
  caFile?: string;
  /** A bearer token (`token`). */
  token?: string;
  /** A token file path instead (`tokenFile`). */
  tokenFile?: string;
  /** The context name; "test" by default. */
  context?: string;
}

function base64(text: string): string {
  let binary = "";
  for (const b of encoder.encode(text)) binary += String.fromCharCode(b);
  return btoa(binary);
}

/** Renders a standard kubeconfig (one cluster, user and context). */
export function kubeconfigYaml(options: KubeconfigOptions): string {
  const ctx = options.context ?? "test";
  const cluster = [`    server: ${options.server}`];
  if (options.caCert !== undefined) cluster.push(`    certificate-authority-data: ${base64(options.caCert)}`);
  if (options.caFile !== undefined) cluster.push(`    certificate-authority: ${options.caFile}`);
  const user: string[] = [];
  if (options.token !== undefined) user.push(`    token: ${options.token}`);
  if (options.tokenFile !== undefined) user.push(`    tokenFile: ${options.tokenFile}`);
  return [
    "apiVersion: v1",
    "kind: Config",
    "clusters:",
    `- name: ${ctx}-cluster`,
    "  cluster:",
    ...cluster,
    "users:",
    `- name: ${ctx}-user`,
    "  user:",
    ...(user.length > 0 ? user : ["    {}"]),
    "contexts:",
    `- name: ${ctx}`,
    "  context:",
    `    cluster: ${ctx}-cluster`,
    `    user: ${ctx}-user`,
    `current-context: ${ctx}`,
    "",
  ].join("\n");
}

/** Options for {@link KubeApiServer.start}. */
export interface KubeApiServerOptions {
  /** A folder for the PKI (created; removed by `close()` when the server made it). */
  dir?: string;
  /** An existing PKI; generated in `dir` when absent. */
  pki?: TestPki;
  /** Extra SAN IPs when the PKI is generated (e.g. an underlay address agents connect to). */
  certIps?: string[];
  /** The address to listen on; 127.0.0.1 by default ("0.0.0.0" or "::" for netns agents). */
  hostname?: string;
  /** The port; 0 (any free port) by default. Kept across stop/start. */
  port?: number;
  /** The accepted bearer token; a random one by default. */
  token?: string;
  /** How a stale resourceVersion is answered on a watch: an ERROR event (default) or HTTP 410. */
  expiredAs?: "event" | "http";
  /** How often open watches with `allowWatchBookmarks=true` get a BOOKMARK; 0 = only on `sendBookmarks()`. */
  bookmarkIntervalMs?: number;
}

/** One request the server saw. */
export interface RequestRecord {
  /** "list", "get", "watch" or "other". */
  kind: "list" | "get" | "watch" | "other";
  /** Path and query. */
  url: string;
  /** The HTTP status answered. */
  status: number;
  /** The `User-Agent` header. */
  userAgent: string;
}

interface HistoryEntry {
  rv: number;
  type: "ADDED" | "MODIFIED" | "DELETED";
  object: ApiNode;
}

interface Watcher {
  send(type: WatchEventType, object: unknown): void;
  close(): void;
  bookmarks: boolean;
}

function status(code: number, reason: string, message: string): Record<string, unknown> {
  return { kind: "Status", apiVersion: "v1", metadata: {}, status: "Failure", message, reason, code };
}

function jsonResponse(code: number, body: unknown): Response {
  return new Response(JSON.stringify(body), { status: code, headers: { "content-type": "application/json" } });
}

function randomToken(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(18));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * The emulated API server. Make one with {@link KubeApiServer.start};
 * always `close()` it in `finally`.
 */
export class KubeApiServer {
  /** The bearer token the server accepts. */
  readonly token: string;
  /** The PKI the server presents (its `caCert` verifies the server). */
  readonly pki: TestPki;
  /** Every request so far, oldest first. */
  readonly requests: RequestRecord[] = [];

  readonly #hostname: string;
  #port: number;
  readonly #ownsDir: boolean;
  readonly #expiredAs: "event" | "http";
  readonly #bookmarkIntervalMs: number;
  #server: Deno.HttpServer | undefined;
  #abort: AbortController | undefined;
  #rv = 100;
  #compactedRv = 0;
  #uid = 0;
  readonly #nodes = new Map<string, ApiNode>();
  #history: HistoryEntry[] = [];
  readonly #watchers = new Set<Watcher>();
  #fault: { status: number; remaining: number } | undefined;
  #bookmarkTimer: ReturnType<typeof setInterval> | undefined;

  private constructor(options: KubeApiServerOptions, pki: TestPki, ownsDir: boolean) {
    this.token = options.token ?? randomToken();
    this.pki = pki;
    this.#hostname = options.hostname ?? "127.0.0.1";
    this.#port = options.port ?? 0;
    this.#ownsDir = ownsDir;
    this.#expiredAs = options.expiredAs ?? "event";
    this.#bookmarkIntervalMs = options.bookmarkIntervalMs ?? 1000;
  }

  /** Generates (or takes) a PKI and starts serving. */
  static async start(options: KubeApiServerOptions = {}): Promise<KubeApiServer> {
    let pki = options.pki;
    let ownsDir = false;
    if (!pki) {
      const dir = options.dir ?? Deno.makeTempDirSync({ prefix: "pontoon-kubeapi-" });
      ownsDir = options.dir === undefined;
      pki = await makeTestPki(dir, { ips: options.certIps });
    }
    const server = new KubeApiServer(options, pki, ownsDir);
    await server.startServing();
    return server;
  }

  /** The port served on (fixed after the first start). */
  get port(): number {
    return this.#port;
  }

  /** The base URL, e.g. `https://127.0.0.1:40123`, for the listening address (or `host`). */
  url(host?: string): string {
    let h = host ?? (this.#hostname === "0.0.0.0" ? "127.0.0.1" : this.#hostname === "::" ? "::1" : this.#hostname);
    if (h.includes(":")) h = `[${h}]`;
    return `https://${h}:${this.#port}`;
  }

  /** A kubeconfig for this server with its CA and token; override any field. */
  kubeconfig(overrides: Partial<KubeconfigOptions> & { host?: string } = {}): string {
    const { host, ...rest } = overrides;
    return kubeconfigYaml({ server: this.url(host), caCert: this.pki.caCert, token: this.token, ...rest });
  }

  /** True while serving. */
  get running(): boolean {
    return this.#server !== undefined;
  }

  /** Starts serving (again) on the same port. */
  async startServing(): Promise<void> {
    if (this.#server) return;
    const abort = new AbortController();
    const listening = Promise.withResolvers<number>();
    const server = Deno.serve({
      hostname: this.#hostname,
      port: this.#port,
      cert: Deno.readTextFileSync(this.pki.serverCertPath),
      key: Deno.readTextFileSync(this.pki.serverKeyPath),
      signal: abort.signal,
      onListen: (addr) => listening.resolve(addr.port),
      onError: (err) => jsonResponse(500, status(500, "InternalError", String(err))),
    }, (req) => this.#handle(req));
    this.#port = await listening.promise;
    this.#server = server;
    this.#abort = abort;
    if (this.#bookmarkIntervalMs > 0) {
      this.#bookmarkTimer = setInterval(() => this.sendBookmarks(), this.#bookmarkIntervalMs);
    }
  }

  /**
   * Stops serving: every open watch stream ends and the port refuses
   * connections until {@link startServing}. Nodes and history are kept.
   */
  async stop(): Promise<void> {
    if (!this.#server) return;
    clearInterval(this.#bookmarkTimer);
    this.#bookmarkTimer = undefined;
    for (const w of [...this.#watchers]) w.close();
    this.#watchers.clear();
    const server = this.#server;
    this.#server = undefined;
    this.#abort?.abort();
    await server.finished.catch(() => {});
  }

  /** Stops serving and removes the generated PKI folder. */
  async close(): Promise<void> {
    await this.stop();
    if (this.#ownsDir) {
      try {
        Deno.removeSync(this.pki.dir, { recursive: true });
      } catch { /* already gone */ }
    }
  }

  // ---------------------------------------------------------- test controls

  /** The current resource version (of the last change). */
  get resourceVersion(): string {
    return String(this.#rv);
  }

  /** A copy of a stored Node, or undefined. */
  getNode(name: string): ApiNode | undefined {
    const node = this.#nodes.get(name);
    return node ? structuredClone(node) : undefined;
  }

  /** Copies of all stored Nodes, sorted by name. */
  listNodes(): ApiNode[] {
    return [...this.#nodes.keys()].sort().map((n) => structuredClone(this.#nodes.get(n)!));
  }

  /** Adds a Node (ADDED) or replaces a stored one (MODIFIED). Returns the new resource version. */
  setNode(node: ApiNode): string {
    const name = node.metadata.name;
    const old = this.#nodes.get(name);
    const stored: ApiNode = structuredClone(node);
    stored.apiVersion = "v1";
    stored.kind = "Node";
    this.#rv++;
    stored.metadata.resourceVersion = String(this.#rv);
    stored.metadata.uid = old?.metadata.uid ?? `00000000-0000-4000-8000-${String(++this.#uid).padStart(12, "0")}`;
    stored.metadata.creationTimestamp = old?.metadata.creationTimestamp ?? new Date().toISOString().slice(0, 19) + "Z";
    this.#nodes.set(name, stored);
    this.#record(old ? "MODIFIED" : "ADDED", stored);
    return String(this.#rv);
  }

  /** Changes a stored Node in place through `change` (MODIFIED). Throws when absent. */
  updateNode(name: string, change: (node: ApiNode) => void): string {
    const node = this.getNode(name);
    if (!node) throw new Error(`kubeapi: no node ${name}`);
    change(node);
    node.metadata.name = name;
    return this.setNode(node);
  }

  /** Deletes a Node (DELETED). Returns false when it was not there. */
  deleteNode(name: string): boolean {
    const old = this.#nodes.get(name);
    if (!old) return false;
    this.#nodes.delete(name);
    this.#rv++;
    const gone = structuredClone(old);
    gone.metadata.resourceVersion = String(this.#rv);
    this.#record("DELETED", gone);
    return true;
  }

  /**
   * Forgets the event history: every resource version older than the
   * current one becomes stale (list/watch from it get 410 Gone). Open
   * watches are not touched (see {@link expireWatches}).
   */
  compact(): void {
    this.#compactedRv = this.#rv;
    this.#history = [];
  }

  /**
   * Compacts, then ends every open watch with a 410 ERROR event (what a
   * client sees when its watch falls out of the server's window).
   */
  expireWatches(): void {
    this.compact();
    for (const w of [...this.#watchers]) {
      w.send("ERROR", status(410, "Expired", "too old resource version (compacted)"));
      w.close();
    }
  }

  /** Sends a BOOKMARK at the current resource version to watches that allow bookmarks. */
  sendBookmarks(): void {
    const object = { kind: "Node", apiVersion: "v1", metadata: { resourceVersion: String(this.#rv) } };
    for (const w of this.#watchers) if (w.bookmarks) w.send("BOOKMARK", object);
  }

  /**
   * Makes the next `count` authenticated requests fail with HTTP `code`
   * (e.g. 500, 503, 429); `count` Infinity until `clearFault()`.
   */
  failRequests(code: number, count = Infinity): void {
    this.#fault = { status: code, remaining: count };
  }

  /** Ends request failure injection. */
  clearFault(): void {
    this.#fault = undefined;
  }

  /** How many open watch streams there are. */
  get openWatches(): number {
    return this.#watchers.size;
  }

  /** How many requests of `kind` answered `status` (any status when omitted). */
  count(kind: RequestRecord["kind"], code?: number): number {
    return this.requests.filter((r) => r.kind === kind && (code === undefined || r.status === code)).length;
  }

  // ---------------------------------------------------------- protocol

  #record(type: HistoryEntry["type"], object: ApiNode): void {
    this.#history.push({ rv: this.#rv, type, object: structuredClone(object) });
    for (const w of this.#watchers) w.send(type, object);
  }

  #log(kind: RequestRecord["kind"], req: Request, url: URL, code: number): void {
    this.requests.push({
      kind,
      url: url.pathname + url.search,
      status: code,
      userAgent: req.headers.get("user-agent") ?? "",
    });
  }

  #handle(req: Request): Response {
    const url = new URL(req.url);
    const watch = ["1", "true"].includes(url.searchParams.get("watch") ?? "");
    const kind: RequestRecord["kind"] = url.pathname === "/api/v1/nodes"
      ? (watch ? "watch" : "list")
      : url.pathname.startsWith("/api/v1/nodes/")
      ? "get"
      : "other";
    const answer = (code: number, body: unknown) => {
      this.#log(kind, req, url, code);
      return jsonResponse(code, body);
    };
    if (req.headers.get("authorization") !== `Bearer ${this.token}`) {
      return answer(401, status(401, "Unauthorized", "Unauthorized"));
    }
    if (this.#fault && this.#fault.remaining > 0) {
      this.#fault.remaining--;
      return answer(this.#fault.status, status(this.#fault.status, "InternalError", "injected failure"));
    }
    if (req.method !== "GET") return answer(405, status(405, "MethodNotAllowed", `${req.method} is not supported`));
    if (kind === "list") return this.#list(url, answer);
    if (kind === "get") {
      const node = this.#nodes.get(decodeURIComponent(url.pathname.slice("/api/v1/nodes/".length)));
      if (!node) return answer(404, status(404, "NotFound", `nodes "${url.pathname.split("/").pop()}" not found`));
      return answer(200, node);
    }
    if (kind === "watch") return this.#watch(req, url);
    return answer(404, status(404, "NotFound", "the server could not find the requested resource"));
  }

  #list(url: URL, answer: (code: number, body: unknown) => Response): Response {
    const limit = Number(url.searchParams.get("limit") ?? "0");
    let offset = 0;
    let listRv = this.#rv;
    const token = url.searchParams.get("continue");
    if (token) {
      try {
        const parsed = JSON.parse(atob(token)) as { rv: number; offset: number };
        listRv = parsed.rv;
        offset = parsed.offset;
      } catch {
        return answer(400, status(400, "BadRequest", "continue key is not valid"));
      }
      if (listRv < this.#compactedRv) {
        return answer(410, status(410, "Expired", "The provided continue parameter is too old"));
      }
    }
    const all = this.listNodes();
    const page = limit > 0 ? all.slice(offset, offset + limit) : all.slice(offset);
    const metadata: Record<string, string> = { resourceVersion: String(listRv) };
    if (limit > 0 && offset + limit < all.length) {
      metadata.continue = btoa(JSON.stringify({ rv: listRv, offset: offset + limit }));
    }
    for (const item of page) {
      delete item.kind;
      delete item.apiVersion;
    }
    return answer(200, { kind: "NodeList", apiVersion: "v1", metadata, items: page });
  }

  #watch(req: Request, url: URL): Response {
    const rvText = url.searchParams.get("resourceVersion") ?? "";
    const fromRv = rvText === "" || rvText === "0" ? undefined : Number(rvText);
    if (fromRv !== undefined && !Number.isInteger(fromRv)) {
      this.#log("watch", req, url, 400);
      return jsonResponse(400, status(400, "BadRequest", `invalid resourceVersion ${rvText}`));
    }
    const stale = fromRv !== undefined && fromRv < this.#compactedRv;
    const expiredStatus = status(410, "Expired", `too old resource version: ${fromRv} (${this.#compactedRv})`);
    if (stale && this.#expiredAs === "http") {
      this.#log("watch", req, url, 410);
      return jsonResponse(410, expiredStatus);
    }
    this.#log("watch", req, url, 200);
    const timeoutSeconds = Number(url.searchParams.get("timeoutSeconds") ?? "0");
    const bookmarks = url.searchParams.get("allowWatchBookmarks") === "true";
    let controller: ReadableStreamDefaultController<Uint8Array>;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const watcher: Watcher = {
      bookmarks,
      send: (type, object) => {
        try {
          controller.enqueue(encoder.encode(JSON.stringify({ type, object }) + "\n"));
        } catch { /* stream already closed */ }
      },
      close: () => {
        clearTimeout(timer);
        this.#watchers.delete(watcher);
        try {
          controller.close();
        } catch { /* already closed */ }
      },
    };
    const body = new ReadableStream<Uint8Array>({
      start: (c) => {
        controller = c;
        if (stale) {
          watcher.send("ERROR", expiredStatus);
          c.close();
          return;
        }
        if (fromRv === undefined) {
          for (const node of this.listNodes()) watcher.send("ADDED", node);
        } else {
          for (const e of this.#history) if (e.rv > fromRv) watcher.send(e.type, e.object);
        }
        this.#watchers.add(watcher);
        if (timeoutSeconds > 0) timer = setTimeout(() => watcher.close(), timeoutSeconds * 1000);
      },
      cancel: () => {
        clearTimeout(timer);
        this.#watchers.delete(watcher);
      },
    });
    // A client that goes away cancels the body stream (cancel above).
    return new Response(body, { status: 200, headers: { "content-type": "application/json" } });
  }
}
