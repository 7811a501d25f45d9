/**
 * Fault soak: concurrent ADD/DEL cycles with the plugin SIGKILLed at random
 * moments and netns deleted before DEL. Small counts in `make test`; set
 * PONTOON_SOAK_CYCLES (per worker) and PONTOON_SOAK_WORKERS for a long run
 * (`make soak`).
 */
import assert from "node:assert/strict";
import { cni, type CniCall, delNetns, must, PLUGIN, REFERENCE_DIR, sh, snapshot, testNet, uniq } from "./harness.ts";

const WORKERS = Number(Deno.env.get("PONTOON_SOAK_WORKERS") ?? 16);
const CYCLES = Number(Deno.env.get("PONTOON_SOAK_CYCLES") ?? 3);
const KILL_RATE = 0.05;

/** Runs the plugin and SIGKILLs it after a random 0-40 ms with probability KILL_RATE. */
async function maybeKilled(
  call: CniCall,
): Promise<{ killed: boolean; code: number; json: { ips?: { address: string }[] } | null }> {
  if (Math.random() >= KILL_RATE) {
    const out = await cni(call);
    return { killed: false, code: out.code, json: out.json };
  }
  const env: Record<string, string> = {
    PATH: Deno.env.get("PATH") ?? "/usr/sbin:/usr/bin:/sbin:/bin",
    CNI_COMMAND: call.command,
    CNI_CONTAINERID: call.containerId!,
    CNI_NETNS: call.netns ?? "",
    CNI_IFNAME: "eth0",
    CNI_PATH: REFERENCE_DIR,
  };
  const child = new Deno.Command(PLUGIN, { env, clearEnv: true, stdin: "piped", stdout: "piped", stderr: "null" })
    .spawn();
  const timer = setTimeout(() => {
    try {
      child.kill("SIGKILL");
    } catch { /* already exited */ }
  }, Math.random() * 40);
  const w = child.stdin.getWriter();
  await w.write(new TextEncoder().encode(JSON.stringify(call.conf))).catch(() => {});
  await w.close().catch(() => {});
  const out = await child.output();
  clearTimeout(timer);
  if (out.signal === "SIGKILL") return { killed: true, code: -1, json: null };
  const text = new TextDecoder().decode(out.stdout);
  return { killed: false, code: out.code, json: text ? JSON.parse(text) : null };
}

Deno.test(`fault soak: ${WORKERS} workers × ${CYCLES} ADD/DEL cycles with SIGKILLs and vanished netns leave nothing behind`, async () => {
  const net = testNet({ subnet: "10.196.0.0/22" });
  const conf = net.conf("1.1.0", { ipMasq: true });
  const live = new Map<string, string>(); // address -> container id of a live pod
  const allNetns: string[] = [];
  const stats = { adds: 0, dels: 0, killed: 0, goneNetns: 0 };
  try {
    const worker = async (w: number) => {
      for (let c = 0; c < CYCLES; c++) {
        const id = `soak-${w}-${c}-${uniq("")}`;
        const ns = uniq("ts");
        allNetns.push(ns);
        await must("ip", ["netns", "add", ns]);
        const path = `/run/netns/${ns}`;
        const add = await maybeKilled({ command: "ADD", conf, containerId: id, netns: path });
        stats.adds++;
        if (add.killed) stats.killed++;
        if (add.code === 0) {
          for (const ip of add.json!.ips!) {
            const holder = live.get(ip.address);
            assert.equal(holder, undefined, `${ip.address} handed to ${id} while ${holder} holds it`);
            live.set(ip.address, id);
          }
        }
        // Sometimes the runtime's netns is gone by the time DEL comes.
        let delNetnsPath = path;
        if (Math.random() < 0.25) {
          await delNetns(ns);
          delNetnsPath = Math.random() < 0.5 ? "" : path;
          stats.goneNetns++;
        }
        // The runtime retries DEL until it succeeds.
        for (let attempt = 0;; attempt++) {
          const del = await maybeKilled({ command: "DEL", conf, containerId: id, netns: delNetnsPath });
          stats.dels++;
          if (del.killed) stats.killed++;
          if (del.code === 0) break;
          assert.ok(del.killed || attempt < 3, `DEL failed: ${JSON.stringify(del.json)}`);
        }
        for (const [address, holder] of live) if (holder === id) live.delete(address);
        await delNetns(ns);
      }
    };
    await Promise.all(Array.from({ length: WORKERS }, (_, w) => worker(w)));
    // A killed ADD may leave an orphaned `ip` finishing after its DEL: the
    // runtime's GC with no valid attachment cleans that up.
    const gc = await cni({ command: "GC", conf: { ...conf, "cni.dev/valid-attachments": [] } });
    assert.equal(gc.code, 0, gc.stdout);
    const after = await snapshot(net);
    assert.deepEqual(after.links.filter((l) => l !== net.bridge), [], "veths left on the bridge");
    assert.deepEqual(
      after.ipamFiles.filter((f) => !f.includes("last_reserved") && !f.endsWith("/")),
      [],
      "reservations left",
    );
    const table = await must("nft", ["list", "table", "inet", `pontoon-${net.name}`]);
    assert.ok(!/10\.196\.\d+\.\d+ /.test(table.replace("10.196.0.0/22", "")), `a rule names a pod:\n${table}`);
    const ruleset = await must("nft", ["list", "ruleset"]);
    assert.ok(!/10\.196\.[0-3]\.\d+[^/\d]/.test(ruleset.replaceAll("10.196.0.0/22", "")), "a pod address in nft");
    console.log(`soak: ${JSON.stringify(stats)}`);
  } finally {
    await delNetns(...allNetns);
    await sh("ip", ["link", "del", net.bridge]);
    await net.cleanup();
  }
});
