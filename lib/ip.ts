/**
 * The one place that runs `ip` (iproute2).
 *
 * Commands are given as argument arrays and sent as one `ip -batch -`, so
 * the once-per-node bridge set-up and GC cost one process spawn, not
 * twenty (the per-pod steps use netlink, `netlink.ts`). Every token is
 * checked to be free of whitespace, quotes and comment markers before it
 * reaches the batch parser.
 *
 * @module
 */

/** One `ip` command as arguments, without the leading `ip`. */
export type IpCommand = string[];

/** The outcome of a batch. */
export interface BatchResult {
  /** True when every command succeeded. */
  ok: boolean;
  /** 1-based index of the command that failed (ip stops there). */
  failedAt?: number;
  stdout: string;
  stderr: string;
}

/** Options for a batch. */
export interface BatchOptions {
  /** Pass `-json` (for `show` commands). */
  json?: boolean;
  /** Keep going after a failing command (`-force`). */
  force?: boolean;
}

/** An `ip` failure, carrying the failed command and ip's message. */
export class IpError extends Error {
  /** The command that failed. */
  readonly command: IpCommand;
  /** What ip printed on stderr. */
  readonly stderr: string;
  /** Makes an error for `command` with ip's `stderr`. */
  constructor(command: IpCommand, stderr: string) {
    super(`ip ${command.join(" ")}: ${stderr.trim() || "failed"}`);
    this.name = "IpError";
    this.command = command;
    this.stderr = stderr;
  }
}

const SAFE_TOKEN = /^[^\s"'\\#;]+$/;

function toBatchText(commands: IpCommand[]): string {
  return commands.map((cmd) => {
    for (const token of cmd) {
      if (!SAFE_TOKEN.test(token)) throw new Error(`unsafe ip argument ${JSON.stringify(token)}`);
    }
    return cmd.join(" ");
  }).join("\n") + "\n";
}

const decoder = new TextDecoder();

/** Runs `commands` through one `ip -batch -` in the node's netns. */
export async function runBatch(commands: IpCommand[], options: BatchOptions = {}): Promise<BatchResult> {
  if (commands.length === 0) return { ok: true, stdout: "", stderr: "" };
  const args = [];
  if (options.json) args.push("-json");
  if (options.force) args.push("-force");
  args.push("-batch", "-");
  const command = new Deno.Command("ip", { args, stdin: "piped", stdout: "piped", stderr: "piped" });
  const child = command.spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(toBatchText(commands)));
  await writer.close();
  const out = await child.output();
  const stderr = decoder.decode(out.stderr);
  const result: BatchResult = { ok: out.success, stdout: decoder.decode(out.stdout), stderr };
  const failed = /Command failed -:(\d+)/.exec(stderr);
  if (!out.success && failed) result.failedAt = Number(failed[1]);
  return result;
}

/** Runs a batch and throws an IpError naming the first failed command. */
export async function runBatchOrThrow(commands: IpCommand[], options: BatchOptions = {}): Promise<BatchResult> {
  const result = await runBatch(commands, options);
  if (!result.ok) {
    const failed = commands[(result.failedAt ?? 1) - 1] ?? commands[0];
    throw new IpError(failed, result.stderr.replace(/Command failed -:\d+\s*/g, ""));
  }
  return result;
}

/** Runs one `ip -json` show command and parses its output (`[]` when empty). */
export async function showJson<T = Record<string, unknown>>(
  command: IpCommand,
  options: BatchOptions = {},
): Promise<T[]> {
  const result = await runBatchOrThrow([command], { ...options, json: true });
  const text = result.stdout.trim();
  return text === "" ? [] : JSON.parse(text) as T[];
}

/** Runs `bridge -batch -` (iproute2's bridge tool, for VLAN settings). */
export async function runBridgeBatch(commands: IpCommand[]): Promise<void> {
  const child = new Deno.Command("bridge", { args: ["-batch", "-"], stdin: "piped", stdout: "null", stderr: "piped" })
    .spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(toBatchText(commands)));
  await writer.close();
  const out = await child.output();
  if (!out.success) throw new IpError(commands[0], decoder.decode(out.stderr));
}
