/** The agent's unix socket: root-only, one agent per socket, stale sockets replaced, readiness codes. */
import assert from "node:assert/strict";
import { readinessOnlySource, SocketInUseError, startApiServer } from "../lib/api.ts";

/**
 * `GET path` over the unix socket, asynchronously (the plugin's agentGet
 * blocks the thread, and the server under test runs in this process).
 */
async function agentGet(socket: string, path: string): Promise<{ status: number; body: string }> {
  const conn = await Deno.connect({ transport: "unix", path: socket });
  try {
    await conn.write(new TextEncoder().encode(`GET ${path} HTTP/1.1\r\nHost: pontoon\r\nConnection: close\r\n\r\n`));
    const text = await new Response(conn.readable).text();
    return { status: Number(text.slice(9, 12)), body: text.slice(text.indexOf("\r\n\r\n") + 4) };
  } catch (err) {
    conn.close();
    throw err;
  }
}

Deno.test("agent socket: mode 0600, /readyz 503 then 200, a second server on it refused, a stale file replaced", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "pontoon-sock-" });
  const path = `${dir}/run/api.sock`;
  let ready = false;
  const source = readinessOnlySource(() => ({ ready, reason: ready ? "synced" : "waiting for a pod CIDR" }));
  try {
    const server = await startApiServer(path, source);
    try {
      assert.equal(Deno.statSync(path).mode! & 0o777, 0o600);
      assert.deepEqual([...Deno.readDirSync(`${dir}/run`)].map((e) => e.name).sort(), [
        "api.sock",
        "api.sock.lock",
        "api.sock.report",
      ]);
      const before = await agentGet(path, "/readyz");
      assert.equal(before.status, 503);
      assert.match(before.body, /waiting for a pod CIDR/);
      ready = true;
      assert.equal((await agentGet(path, "/readyz")).status, 200);
      assert.equal((await agentGet(path, "/healthz")).status, 200);
      assert.equal((await agentGet(path, "/nope")).status, 404);
      await assert.rejects(startApiServer(path, source), SocketInUseError);
    } finally {
      await server.close();
    }
    assert.throws(() => Deno.statSync(path), Deno.errors.NotFound);
    // A socket file left by a killed agent is replaced.
    const stale = Deno.listen({ transport: "unix", path });
    stale.close();
    const again = await startApiServer(path, source);
    assert.equal((await agentGet(path, "/readyz")).status, 200);
    await again.close();
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("agent socket: a file that is not a socket is never removed, and a path no client could connect to is refused", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "pontoon-sock-" });
  const source = readinessOnlySource(() => ({ ready: true, reason: "synced" }));
  try {
    // A mistyped --api-socket naming an operator's file: refused, the file kept.
    const file = `${dir}/important.conf`;
    Deno.writeTextFileSync(file, "keep me");
    await assert.rejects(startApiServer(file, source), /is not a socket/);
    assert.equal(Deno.readTextFileSync(file), "keep me");
    const folder = `${dir}/folder`;
    Deno.mkdirSync(folder);
    await assert.rejects(startApiServer(folder, source), /is not a socket/);
    assert.ok(Deno.statSync(folder).isDirectory);
    // sun_path holds 108 bytes: a longer socket (or its `.report` beside it) cannot be connected to.
    const long = `${dir}/${"s".repeat(120 - dir.length)}.sock`;
    await assert.rejects(startApiServer(long, source), /too long for a unix socket/);
    assert.throws(() => Deno.lstatSync(long), Deno.errors.NotFound);
    const longest = `${dir}/${"s".repeat(100 - dir.length - 6)}.sock`;
    assert.equal(new TextEncoder().encode(longest).length, 100);
    const server = await startApiServer(longest, source);
    try {
      assert.equal((await agentGet(longest, "/healthz")).status, 200);
    } finally {
      await server.close();
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("agent socket: of two agents started at once on one socket exactly one serves; the other is refused", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "pontoon-sock-" });
  const path = `${dir}/api.sock`;
  const tokenFile = `${dir}/token`;
  Deno.writeTextFileSync(tokenFile, crypto.randomUUID() + "\n", { mode: 0o600 });
  Deno.chmodSync(tokenFile, 0o600);
  const fixture = new URL("./fixtures/api_server.ts", import.meta.url).pathname;
  const spawn = () =>
    new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-all", fixture, path, tokenFile],
      stdout: "null",
      stderr: "piped",
    }).spawn();
  try {
    for (let round = 0; round < 3; round++) {
      const pair = [spawn(), spawn()];
      try {
        // One exits refused; the other keeps serving.
        let timer: ReturnType<typeof setTimeout> | undefined;
        const first = await Promise.race([
          ...pair.map((c, i) => c.status.then(() => i)),
          new Promise<number>((r) => timer = setTimeout(r, 15_000, -1)),
        ]);
        clearTimeout(timer);
        assert.ok(first >= 0, `round ${round}: both agents kept running on one socket`);
        const loser = pair[first];
        const winner = pair[1 - first];
        const err = await new Response(loser.stderr).text();
        assert.match(err, /served by another running process/, err);
        await new Promise((r) => setTimeout(r, 500));
        const alive = await Promise.race([
          winner.status.then(() => false),
          new Promise((r) => setTimeout(r, 100, true)),
        ]);
        assert.ok(alive, `round ${round}: the winner exited`);
        assert.equal((await agentGet(path, "/healthz")).status, 200);
      } finally {
        for (const c of pair) {
          try {
            c.kill("SIGTERM");
          } catch { /* exited */ }
          await c.status;
          await c.stderr.cancel().catch(() => {});
        }
      }
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
