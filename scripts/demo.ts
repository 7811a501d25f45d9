/**
 * `make demo`: two pods on a real bridge through the CNI protocol.
 *
 * Creates two network namespaces, runs `dist/pontoon` exactly as a
 * container runtime would (CNI env vars, config on stdin), shows the
 * addresses it handed out, pings between the pods over IPv4 and IPv6,
 * runs CHECK, then DEL, and removes everything it made.
 */
const plugin = new URL("../dist/pontoon", import.meta.url).pathname;
const tag = (Date.now() % 100000).toString(36);
const pods = [`demo-a-${tag}`, `demo-b-${tag}`];
const bridge = `pdemo${tag}`.slice(0, 15);
const dataDir = Deno.makeTempDirSync({ prefix: "pontoon-demo-" });
const conf = {
  cniVersion: "1.1.0",
  name: `demo-${tag}`,
  type: "pontoon",
  bridge,
  isDefaultGateway: true,
  ipMasq: true,
  ipam: {
    type: "pontoon-ipam",
    ranges: [[{ subnet: "10.244.77.0/24" }], [{ subnet: "fd00:244:77::/64" }]],
    dataDir,
  },
};

async function run(cmd: string, args: string[], stdin?: string) {
  const child = new Deno.Command(cmd, { args, stdin: stdin ? "piped" : "null", stdout: "piped", stderr: "piped" })
    .spawn();
  if (stdin) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  }
  const out = await child.output();
  return {
    ok: out.success,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
}

async function cni(command: string, pod: string, extra: Record<string, unknown> = {}) {
  return await run("env", [
    `CNI_COMMAND=${command}`,
    `CNI_CONTAINERID=${pod}`,
    `CNI_NETNS=/run/netns/${pod}`,
    "CNI_IFNAME=eth0",
    "CNI_PATH=/usr/lib/cni",
    plugin,
  ], JSON.stringify({ ...conf, ...extra }));
}

function step(text: string) {
  console.log(`\n\x1b[1m== ${text}\x1b[0m`);
}

const results: Record<string, { ips: { address: string; gateway: string }[] }> = {};
let failed = false;
try {
  step(`creating pod network namespaces ${pods.join(", ")}`);
  for (const p of pods) await run("ip", ["netns", "add", p]);

  for (const p of pods) {
    step(`CNI ADD ${p} (bridge ${bridge}, IPv4 + IPv6, masquerade on)`);
    const out = await cni("ADD", p);
    if (!out.ok) throw new Error(`ADD failed: ${out.stdout}${out.stderr}`);
    results[p] = JSON.parse(out.stdout);
    for (const ip of results[p].ips) console.log(`  ${p} eth0 ${ip.address} via ${ip.gateway}`);
  }

  const [a, b] = pods;
  for (const ip of results[b].ips) {
    const addr = ip.address.split("/")[0];
    step(`ping ${addr} (${b}) from ${a}`);
    const out = await run("ip", ["netns", "exec", a, "ping", "-c", "2", "-i", "0.2", "-W", "2", addr]);
    console.log(
      out.stdout.trim().split("\n").filter((l) => /bytes from|packet loss/.test(l)).map((l) => `  ${l}`).join("\n"),
    );
    if (!out.ok) failed = true;
  }
  step(`ping the gateway ${results[a].ips[0].gateway} from ${a}`);
  const gw = await run("ip", ["netns", "exec", a, "ping", "-c", "1", "-W", "2", results[a].ips[0].gateway]);
  console.log(`  ${gw.ok ? "reply" : "no reply"}`);
  failed ||= !gw.ok;

  step(`CNI CHECK ${a}`);
  const check = await cni("CHECK", a, { prevResult: results[a] });
  console.log(check.ok ? "  ok" : `  failed: ${check.stdout}`);
  failed ||= !check.ok;

  step("the IPAM store on disk");
  for (const e of [...Deno.readDirSync(`${dataDir}/${conf.name}`)].map((e) => e.name).sort()) console.log(`  ${e}`);
} catch (err) {
  console.error(`demo failed: ${(err as Error).message}`);
  failed = true;
} finally {
  step("CNI DEL both pods, then clean up");
  for (const p of pods) {
    const out = await cni("DEL", p);
    console.log(`  DEL ${p}: ${out.ok ? "ok" : out.stdout}`);
  }
  for (const p of pods) await run("ip", ["netns", "del", p]);
  await run("ip", ["link", "del", bridge]);
  await run("nft", ["delete", "table", "inet", `pontoon-${conf.name}`]);
  Deno.removeSync(dataDir, { recursive: true });
  console.log("  removed namespaces, bridge, masquerade table and IPAM store");
}
console.log(failed ? "\ndemo FAILED" : "\ndemo ok: two pods got addresses from Pontoon and reached each other");
Deno.exit(failed ? 1 : 0);
