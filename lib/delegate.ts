/**
 * Delegated plugins (SPEC §4): finding an IPAM plugin in `CNI_PATH` and
 * running it with the same environment and the full network config.
 *
 * @module
 */
import { type Command, printable } from "./cni.ts";
import { CniError, ErrorCode } from "./errors.ts";

/** Finds executable `type` in the `CNI_PATH` directories, in order. */
export function findPlugin(type: string, path: string[]): string {
  for (const dir of path) {
    const candidate = `${dir}/${type}`;
    try {
      const info = Deno.statSync(candidate);
      if (info.isFile && ((info.mode ?? 0) & 0o111) !== 0) return candidate;
    } catch { /* not in this directory */ }
  }
  throw new CniError(
    ErrorCode.InvalidConfig,
    `ipam.type: plugin "${printable(type)}" not found in CNI_PATH [${path.join(":")}]`,
  );
}

/**
 * Runs a delegated plugin for `command` and returns its parsed stdout (null
 * when it printed nothing). Its stderr passes through to ours; its error
 * document becomes a CniError with its code.
 */
export async function runDelegate(
  executable: string,
  command: Command,
  config: Record<string, unknown>,
): Promise<unknown> {
  const child = new Deno.Command(executable, {
    env: { CNI_COMMAND: command },
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(JSON.stringify(config)));
  await writer.close();
  const out = await child.output();
  const text = new TextDecoder().decode(out.stdout).trim();
  let parsed: unknown = null;
  if (text !== "") {
    try {
      parsed = JSON.parse(text);
    } catch {
      throw new CniError(
        ErrorCode.DelegateFailure,
        `${executable} ${command} printed invalid JSON: ${printable(text)}`,
      );
    }
  }
  if (!out.success) {
    const doc = parsed as { code?: number; msg?: string; details?: string } | null;
    if (doc && typeof doc.code === "number") {
      throw new CniError(doc.code, `${executable}: ${doc.msg ?? ""}${doc.details ? `: ${doc.details}` : ""}`);
    }
    throw new CniError(ErrorCode.DelegateFailure, `${executable} ${command} exited with ${out.code}`);
  }
  return parsed;
}
