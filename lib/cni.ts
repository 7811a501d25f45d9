/**
 * The CNI process contract: environment variables, `CNI_ARGS`, versions.
 *
 * Everything here validates input before anything on the node changes; the
 * errors name the variable and carry the spec's codes.
 *
 * @module
 */
import { CniError, ErrorCode } from "./errors.ts";

/** The versions Pontoon speaks, oldest first. */
export const SUPPORTED_VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] as const;

/** The CNI verbs. */
export type Command = "ADD" | "DEL" | "CHECK" | "STATUS" | "GC" | "VERSION";

const COMMANDS = new Set<Command>(["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION"]);

/** The validated CNI environment of one invocation. */
export interface CniEnv {
  command: Command;
  /** `CNI_CONTAINERID` (ADD, DEL, CHECK). */
  containerId: string;
  /** `CNI_NETNS`; empty when DEL got none. */
  netns: string;
  /** `CNI_IFNAME` (ADD, DEL, CHECK). */
  ifname: string;
  /** Parsed `CNI_ARGS`. */
  args: CniArgs;
  /** `CNI_PATH` split into directories. */
  path: string[];
  /** True when `CNI_NETNS_OVERRIDE` allows the plugin's own netns. */
  netnsOverride: boolean;
}

/** Well-known `CNI_ARGS` keys (CONVENTIONS.md) Pontoon understands. */
export interface CniArgs {
  ignoreUnknown: boolean;
  /** Requested addresses from `IP=` (comma-separated). */
  ips: string[];
  /** Requested MAC from `MAC=`. */
  mac?: string;
  podNamespace?: string;
  podName?: string;
  podUid?: string;
  infraContainerId?: string;
}

const KNOWN_ARGS = new Set([
  "IgnoreUnknown",
  "IP",
  "MAC",
  "K8S_POD_NAMESPACE",
  "K8S_POD_NAME",
  "K8S_POD_UID",
  "K8S_POD_INFRA_CONTAINER_ID",
]);

const CONTAINER_ID = /^[A-Za-z0-9][A-Za-z0-9_.\-]*$/;
const IFNAME = /^[A-Za-z0-9_][A-Za-z0-9_.\-]*$/;
/** Longest container id accepted; keeps index file names under NAME_MAX. */
export const MAX_CONTAINER_ID = 200;

/** Checks a container id as libcni does, plus a length cap; returns an error text or null. */
export function containerIdProblem(id: string): string | null {
  if (id === "") return "is empty";
  if (id.length > MAX_CONTAINER_ID) return `is longer than ${MAX_CONTAINER_ID} characters`;
  if (!CONTAINER_ID.test(id)) {
    return `"${printable(id)}" must match ${CONTAINER_ID.source}`;
  }
  return null;
}

/**
 * Checks an interface name: at most 15 bytes, not `.` or `..`, and only
 * letters, digits, `_`, `.` and `-` (names reach `ip` and sysfs paths).
 */
export function ifnameProblem(name: string): string | null {
  if (name === "") return "is empty";
  const bytes = new TextEncoder().encode(name).length;
  if (bytes > 15) return `"${printable(name)}" is ${bytes} bytes; the kernel allows 15`;
  if (name === "." || name === "..") return `"${name}" is not a valid interface name`;
  if (!IFNAME.test(name)) {
    return `"${printable(name)}" may hold only letters, digits, '_', '.' and '-'`;
  }
  return null;
}

/** Escapes control characters so an error message stays one readable line. */
export function printable(text: string): string {
  const shown = text.length > 80 ? text.slice(0, 80) + "…" : text;
  // deno-lint-ignore no-control-regex
  return shown.replace(/[\x00-\x1f\x7f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`);
}

/** libcni's boolean in CNI_ARGS: `1`/`true`/`0`/`false`, any case; anything else is an error. */
function parseArgBool(key: string, value: string): boolean {
  switch (value.toLowerCase()) {
    case "1":
    case "true":
      return true;
    case "0":
    case "false":
      return false;
  }
  throw new CniError(
    ErrorCode.InvalidEnvironment,
    `CNI_ARGS: ${key}="${printable(value)}" is not a boolean (1, true, 0 or false)`,
  );
}

/**
 * Parses `CNI_ARGS` (`K=V;K2=V2`) the way libcni does: every pair needs
 * exactly one `=`, and unknown keys are an error unless `IgnoreUnknown` is
 * true (`1` or `true` in any case, as libcni reads it).
 */
export function parseCniArgs(raw: string): CniArgs {
  const args: CniArgs = { ignoreUnknown: false, ips: [] };
  if (raw === "") return args;
  const pairs = raw.split(";").map((pair) => {
    const parts = pair.split("=");
    if (parts.length !== 2 || parts[0] === "") {
      throw new CniError(
        ErrorCode.InvalidEnvironment,
        `CNI_ARGS: "${printable(pair)}" is not KEY=VALUE`,
      );
    }
    return [parts[0], parts[1]] as const;
  });
  const ignore = pairs.find(([k]) => k === "IgnoreUnknown");
  if (ignore !== undefined) args.ignoreUnknown = parseArgBool("IgnoreUnknown", ignore[1]);
  for (const [key, value] of pairs) {
    if (!KNOWN_ARGS.has(key)) {
      if (args.ignoreUnknown) continue;
      throw new CniError(
        ErrorCode.InvalidEnvironment,
        `CNI_ARGS: unknown key "${printable(key)}" (set IgnoreUnknown=1 to ignore it)`,
      );
    }
    switch (key) {
      case "IP":
        args.ips = value.split(",").map((s) => s.trim()).filter((s) => s !== "");
        break;
      case "MAC":
        args.mac = value;
        break;
      case "K8S_POD_NAMESPACE":
        args.podNamespace = value;
        break;
      case "K8S_POD_NAME":
        args.podName = value;
        break;
      case "K8S_POD_UID":
        args.podUid = value;
        break;
      case "K8S_POD_INFRA_CONTAINER_ID":
        args.infraContainerId = value;
        break;
    }
  }
  return args;
}

/** Reads and validates the CNI environment; throws code 4 naming each bad variable. */
export function readCniEnv(env: Record<string, string | undefined>): CniEnv {
  const command = env.CNI_COMMAND ?? "";
  if (!COMMANDS.has(command as Command)) {
    throw new CniError(
      ErrorCode.InvalidEnvironment,
      `CNI_COMMAND: unknown command "${printable(command)}"`,
    );
  }
  const cmd = command as Command;
  const perAttachment = cmd === "ADD" || cmd === "DEL" || cmd === "CHECK";
  const required: string[] = [];
  if (perAttachment) {
    required.push("CNI_CONTAINERID", "CNI_IFNAME");
    if (cmd !== "DEL") required.push("CNI_NETNS");
  }
  if (cmd !== "VERSION") required.push("CNI_PATH");
  const missing = required.filter((name) => !env[name]);
  if (missing.length > 0) {
    throw new CniError(
      ErrorCode.InvalidEnvironment,
      `required env variables [${missing.join(",")}] missing`,
    );
  }
  const result: CniEnv = {
    command: cmd,
    containerId: "",
    netns: "",
    ifname: "",
    args: { ignoreUnknown: false, ips: [] },
    path: (env.CNI_PATH ?? "").split(":").filter((p) => p !== ""),
    netnsOverride: /^(1|true)$/i.test(env.CNI_NETNS_OVERRIDE ?? ""),
  };
  if (!perAttachment) return result;

  result.containerId = env.CNI_CONTAINERID!;
  const idProblem = containerIdProblem(result.containerId);
  if (idProblem) throw new CniError(ErrorCode.InvalidEnvironment, `CNI_CONTAINERID ${idProblem}`);

  result.ifname = env.CNI_IFNAME!;
  const ifProblem = ifnameProblem(result.ifname);
  if (ifProblem) throw new CniError(ErrorCode.InvalidEnvironment, `CNI_IFNAME ${ifProblem}`);

  result.netns = env.CNI_NETNS ?? "";
  if (result.netns !== "" && (!result.netns.startsWith("/") || result.netns.includes("\0"))) {
    throw new CniError(
      ErrorCode.InvalidEnvironment,
      `CNI_NETNS "${printable(result.netns)}" must be an absolute path`,
    );
  }
  result.args = parseCniArgs(env.CNI_ARGS ?? "");
  return result;
}

/** Compares two CNI versions numerically; negative when a < b. */
export function compareVersions(a: string, b: string): number {
  const pa = a.split(".").map(Number);
  const pb = b.split(".").map(Number);
  for (let i = 0; i < 3; i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

/** True when Pontoon speaks `version`. */
export function isSupportedVersion(version: unknown): version is string {
  return typeof version === "string" &&
    (SUPPORTED_VERSIONS as readonly string[]).includes(version);
}
