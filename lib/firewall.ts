/**
 * nftables through `nft`: one masquerade table per network.
 *
 * The rule set is per network, not per pod: pod egress from the network's
 * subnets to anywhere outside them (and outside multicast) is
 * masqueraded. ADD only makes sure the table exists, DEL has nothing to
 * undo, and no rule ever names a pod, so nothing can leak when DEL comes
 * after the netns is gone. Installing replaces the whole table in one nft
 * transaction, so concurrent ADDs converge on the same content.
 *
 * @module
 */
import { type Cidr, formatCidr } from "./addr.ts";

/** The nft table owning a network's masquerade rules. */
export function masqueradeTable(network: string): string {
  // Network names match [A-Za-z0-9][A-Za-z0-9_.-]*, valid after a letter prefix.
  return `pontoon-${network}`;
}

/** The nft script that (re)creates a network's masquerade table atomically. */
export function masqueradeScript(network: string, subnets: Cidr[]): string {
  const table = `inet ${masqueradeTable(network)}`;
  const rules = subnets.map((s) => {
    const fam = s.family === 4 ? "ip" : "ip6";
    const mcast = s.family === 4 ? "224.0.0.0/4" : "ff00::/8";
    const net = formatCidr(s);
    return `    ${fam} saddr ${net} ${fam} daddr != ${net} ${fam} daddr != ${mcast} counter masquerade`;
  });
  return [
    `table ${table} {}`,
    `delete table ${table}`,
    `table ${table} {`,
    // nft refuses comments over 128 characters; network names may be longer.
    `  comment "${`Pontoon: masquerade egress of CNI network ${network}`.slice(0, 128)}"`,
    `  chain postrouting {`,
    `    type nat hook postrouting priority srcnat; policy accept;`,
    ...rules,
    `  }`,
    `}`,
    "",
  ].join("\n");
}

const decoder = new TextDecoder();

/** Runs `nft` with a script on stdin; throws with nft's message on failure. */
export async function runNftScript(script: string): Promise<void> {
  const child = new Deno.Command("nft", { args: ["-f", "-"], stdin: "piped", stdout: "null", stderr: "piped" }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(script));
  await writer.close();
  const out = await child.output();
  if (!out.success) throw new Error(`nft: ${decoder.decode(out.stderr).trim()}`);
}

/** Runs `nft` with arguments and returns stdout, or null when it fails. */
export async function nftOutput(args: string[]): Promise<string | null> {
  const out = await new Deno.Command("nft", { args, stdout: "piped", stderr: "null" }).output();
  return out.success ? decoder.decode(out.stdout) : null;
}

/** True when the network's masquerade table exists with a rule per subnet. */
export async function masqueradeInstalled(network: string, subnets: Cidr[]): Promise<boolean> {
  const text = await nftOutput(["list", "table", "inet", masqueradeTable(network)]);
  if (text === null) return false;
  return subnets.every((s) => text.includes(`saddr ${formatCidr(s)} `));
}

/** Removes a network's masquerade table (absent is fine). */
export async function removeMasquerade(network: string): Promise<void> {
  const table = `inet ${masqueradeTable(network)}`;
  await runNftScript(`table ${table} {}\ndelete table ${table}\n`);
}

// ------------------------------------------------- cluster masquerade (agent)

/** The nft table (`inet`) the node agent owns for cluster-wide masquerade. */
export const CLUSTER_MASQUERADE_TABLE = "pontoon-cluster";

function scriptSignature(text: string): string {
  let hash = 0x811c9dc5;
  for (const byte of new TextEncoder().encode(text)) hash = Math.imul(hash ^ byte, 0x01000193) >>> 0;
  return hash.toString(16).padStart(8, "0");
}

/**
 * The nft script that (re)creates the agent's masquerade table atomically:
 * traffic from this node's pod CIDRs to anywhere outside the cluster CIDRs
 * (and outside multicast) is masqueraded; pod-to-pod traffic across nodes
 * (destination inside a cluster CIDR) never is. A family without a cluster
 * CIDR gets no rule. The table comment carries a signature of the content,
 * so `clusterMasqueradeInstalled` can tell a current table from a stale one.
 */
export function clusterMasqueradeScript(podCidrs: Cidr[], clusterCidrs: Cidr[]): string {
  const rules: string[] = [];
  for (const family of [4, 6] as const) {
    const sources = podCidrs.filter((c) => c.family === family).map(formatCidr);
    const cluster = clusterCidrs.filter((c) => c.family === family).map(formatCidr);
    if (sources.length === 0 || cluster.length === 0) continue;
    const fam = family === 4 ? "ip" : "ip6";
    const mcast = family === 4 ? "224.0.0.0/4" : "ff00::/8";
    rules.push(
      `    ${fam} saddr { ${sources.join(", ")} } ${fam} daddr != { ${cluster.join(", ")} } ` +
        `${fam} daddr != ${mcast} counter masquerade`,
    );
  }
  const body = [
    `  chain postrouting {`,
    `    type nat hook postrouting priority srcnat; policy accept;`,
    ...rules,
    `  }`,
  ].join("\n");
  const table = `inet ${CLUSTER_MASQUERADE_TABLE}`;
  return [
    `table ${table} {}`,
    `delete table ${table}`,
    `table ${table} {`,
    `  comment "Pontoon agent: masquerade pod egress leaving the cluster [${scriptSignature(body)}]"`,
    body,
    `}`,
    "",
  ].join("\n");
}

/** True when the agent's masquerade table exists with exactly the content of `script`. */
export async function clusterMasqueradeInstalled(script: string): Promise<boolean> {
  const text = await nftOutput(["list", "table", "inet", CLUSTER_MASQUERADE_TABLE]);
  if (text === null) return false;
  const signature = /\[([0-9a-f]{8})\]"/.exec(script)?.[1];
  // Rule lines end in the verdict; the table comment also says "masquerade".
  const rules = (t: string) => t.split("\n").filter((l) => l.trim().endsWith(" masquerade")).length;
  const wanted = rules(script);
  const present = rules(text);
  return signature !== undefined && text.includes(`[${signature}]`) && present === wanted;
}

/** Installs `script` (from `clusterMasqueradeScript`) unless it is already in place; true when it was applied. */
export async function ensureClusterMasquerade(script: string): Promise<boolean> {
  if (await clusterMasqueradeInstalled(script)) return false;
  await runNftScript(script);
  return true;
}

/** Removes the agent's masquerade table (absent is fine). */
export async function removeClusterMasquerade(): Promise<void> {
  const table = `inet ${CLUSTER_MASQUERADE_TABLE}`;
  await runNftScript(`table ${table} {}\ndelete table ${table}\n`);
}
