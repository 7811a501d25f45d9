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
const [v4Subnet, v6Subnet] = freeSubnets();
const conf = {
  cniVersion: "1.1.0",
  name: `demo-${tag}`,
  type: "pontoon",
  bridge,
  isDefaultGateway: true,
  ipMasq: true,
  ipam: {
    type: "pontoon-ipam",
    ranges: [[{ subnet: v4Subnet }], [{ subnet: v6Subnet }]],
    dataDir,
  },
};

/** A 10.x.y.0/24 and an fd00::/64 that no route or address on this machine uses. */
function freeSubnets(): [string, string] {
  const used = new TextDecoder().decode(
    new Deno.Command("ip", { args: ["-4", "route", "show", "table", "all"], stdout: "piped" }).outputSync().stdout,
  );
  for (let i = 0; i < 100; i++) {
    const [a, b] = crypto.getRandomValues(new Uint8Array(2));
    const prefix = `10.${100 + (a % 150)}.${b}`;
    if (!used.includes(`${prefix}.`)) return [`${prefix}.0/24`, `fd00:${a.toString(16)}:${b.toString(16)}::/64`];
  }
  return ["10.244.77.0/24", "fd00:244:77::/64"];
}

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

// The plugin turns on forwarding (it is the pods' gateway); a demo on a
// workstation should not leave it on, since IPv6 forwarding makes the host
// ignore router advertisements.
const NODE_SYSCTLS = [
  "net/ipv4/ip_forward",
  "net/ipv6/conf/all/forwarding",
  "net/bridge/bridge-nf-call-iptables",
  "net/bridge/bridge-nf-call-ip6tables",
];
const sysctlsBefore = new Map(NODE_SYSCTLS.map((key) => [key, readSysctl(key)]));

function readSysctl(key: string): string | undefined {
  try {
    return Deno.readTextFileSync(`/proc/sys/${key}`).trim();
  } catch {
    return undefined;
  }
}

function restoreSysctls(): string[] {
  const restored: string[] = [];
  for (const [key, value] of sysctlsBefore) {
    if (value === undefined || readSysctl(key) === value) continue;
    Deno.writeTextFileSync(`/proc/sys/${key}`, value);
    restored.push(`${key.replaceAll("/", ".")}=${value}`);
  }
  return restored;
}

const results: Record<string, {
  interfaces: { name: string; mac: string; sandbox?: string }[];
  ips: { address: string; gateway: string }[];
}> = {};
let failed = false;
try {
  step(`creating pod network namespaces ${pods.join(", ")}`);
  for (const p of pods) await run("ip", ["netns", "add", p]);

  step("the network config a runtime sends on stdin");
  const fields = Object.entries(conf).map(([k, v]) => `    ${JSON.stringify(k)}: ${JSON.stringify(v)}`);
  console.log(`  {\n${fields.join(",\n")}\n  }`);
  console.log("  ... run as: CNI_COMMAND=ADD CNI_CONTAINERID=<pod> CNI_NETNS=/run/netns/<pod> CNI_IFNAME=eth0 \\");
  console.log(`             CNI_PATH=/usr/lib/cni ${plugin} < config`);

  for (const p of pods) {
    step(`CNI ADD ${p} (bridge ${bridge}, IPv4 + IPv6, masquerade on)`);
    const out = await cni("ADD", p);
    if (!out.ok) throw new Error(`ADD failed: ${out.stdout}${out.stderr}`);
    results[p] = JSON.parse(out.stdout);
    for (const i of results[p].interfaces) {
      console.log(`  interface ${i.name.padEnd(15)} ${i.mac}${i.sandbox ? `  (in ${i.sandbox})` : "  (host)"}`);
    }
    for (const ip of results[p].ips) console.log(`  address   ${ip.address} via ${ip.gateway}`);
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
    failed ||= !out.ok;
  }
  const again = await cni("DEL", pods[0]);
  console.log(`  DEL ${pods[0]} again: ${again.ok ? "ok (DEL is idempotent)" : again.stdout}`);
  failed ||= !again.ok;
  const left = [...safeReadDir(`${dataDir}/${conf.name}`)].filter((n) => /^[0-9a-f.:]+$/.test(n) && /[.:]/.test(n));
  console.log(`  addresses still reserved: ${left.length === 0 ? "none" : left.join(", ")}`);
  failed ||= left.length > 0;
  for (const p of pods) await run("ip", ["netns", "del", p]);
  await run("ip", ["link", "del", bridge]);
  await run("nft", ["delete", "table", "inet", `pontoon-${conf.name}`]);
  for (const marker of safeReadDir("/run/pontoon/state")) {
    if (marker.endsWith(`-bridge-${bridge}`) || marker.endsWith(`-masq-${conf.name}`)) {
      Deno.removeSync(`/run/pontoon/state/${marker}`);
    }
  }
  Deno.removeSync(dataDir, { recursive: true });
  console.log("  removed namespaces, bridge, masquerade table, node markers and IPAM store");
  const restored = restoreSysctls();
  if (restored.length > 0) console.log(`  restored the node's sysctls: ${restored.join(", ")}`);
}
console.log(failed ? "\ndemo FAILED" : "\ndemo ok: two pods got addresses from Pontoon and reached each other");
Deno.exit(failed ? 1 : 0);

function safeReadDir(dir: string): string[] {
  try {
    return [...Deno.readDirSync(dir)].map((e) => e.name);
  } catch {
    return [];
  }
}
