/**
 * Pontoon's entry point: one binary, several modes.
 *
 * With `CNI_COMMAND` set it is the CNI plugin (kept lean: only the plugin's
 * modules are loaded). Otherwise it is the command line (`pontoon agent`,
 * `pontoon install`, `pontoon status`, ...), loaded on demand.
 *
 * @module
 */
import { concatBytes } from "./lib/bytes.ts";
import { runPlugin } from "./lib/plugin.ts";

/** Reads all of stdin synchronously (faster than a stream for small input). */
function readStdinSync(): Uint8Array {
  const chunks: Uint8Array[] = [];
  const buf = new Uint8Array(64 * 1024);
  let total = 0;
  for (;;) {
    const n = Deno.stdin.readSync(buf);
    if (n === null || n === 0) break;
    chunks.push(buf.slice(0, n));
    total += n;
    if (total > 16 * 1024 * 1024) break; // no config is this large
  }
  return concatBytes(chunks);
}

async function pluginMain(): Promise<number> {
  let stdin: Uint8Array;
  try {
    stdin = readStdinSync();
  } catch (err) {
    const doc = {
      cniVersion: "1.1.0",
      code: 5,
      msg: "I/O failure",
      details: `reading stdin: ${(err as Error).message}`,
    };
    Deno.stdout.writeSync(new TextEncoder().encode(JSON.stringify(doc)));
    return 1;
  }
  const { stdout, code } = await runPlugin(Deno.env.toObject(), stdin);
  if (stdout !== "") Deno.stdout.writeSync(new TextEncoder().encode(stdout + "\n"));
  return code;
}

if (import.meta.main) {
  if (Deno.env.get("CNI_COMMAND") !== undefined) {
    Deno.exit(await pluginMain());
  } else {
    const { cliMain } = await import("./lib/cli.ts");
    Deno.exit(await cliMain(Deno.args));
  }
}
