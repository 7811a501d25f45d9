/**
 * `pontoon install`: the bundle set copied into a CNI bin dir behind an
 * atomically replaced symlink (idempotent, previous set kept, older ones
 * pruned), the compiled-binary path, the standalone conflist, and an ADD
 * through the installed copy in a namespace.
 */
import assert from "node:assert/strict";
import { detectProgram, installProgram, standaloneConflist } from "../lib/install.ts";
import { parseCidr } from "../lib/addr.ts";
import { PLUGIN, sh, uniq } from "./harness.ts";

const DIST = new URL("../dist", import.meta.url).pathname;

function tempDir(): string {
  return Deno.makeTempDirSync({ prefix: "pontoon-install-" });
}

/**
 * Asserts `<bin>/pontoon` is a symlink into a complete set (launcher, deno,
 * bundle) and that the installed copy runs `version`. Returns the link and
 * the set's directory.
 */
async function assertWorkingSet(bin: string): Promise<{ link: string; set: string }> {
  const link = Deno.readLinkSync(`${bin}/pontoon`);
  const set = `${bin}/${link.slice(0, link.lastIndexOf("/"))}`;
  for (const f of ["pontoon", "deno", "lib/main.js"]) assert.ok(Deno.statSync(`${set}/${f}`).isFile, f);
  const version = await sh(`${bin}/pontoon`, ["version"]);
  assert.equal(version.code, 0, version.stderr);
  return { link, set };
}

Deno.test("install: the bundle goes in as a set behind a symlink; the installed copy runs; a re-run changes nothing", async () => {
  const dir = tempDir();
  try {
    const bin = `${dir}/bin`;
    const first = await sh(PLUGIN, ["install", "--cni-bin-dir", bin]);
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stdout, /installed .*bin\/pontoon -> .*\.pontoon\/[0-9a-f]{12} \(bundle\)/);
    const { link, set } = await assertWorkingSet(bin);
    assert.match(link, /^\.pontoon\/[0-9a-f]{12}\/pontoon$/);
    assert.equal(Deno.statSync(`${set}/deno`).mode! & 0o777, 0o755);
    const cniVersion = await sh(`${bin}/pontoon`, [], { stdin: "{}", env: { CNI_COMMAND: "VERSION" } });
    assert.ok(JSON.parse(cniVersion.stdout).supportedVersions.includes("1.1.0"), cniVersion.stdout);
    const again = await sh(PLUGIN, ["install", "--cni-bin-dir", bin]);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /already this version/);
    assert.equal(Deno.readLinkSync(`${bin}/pontoon`), link);
    assert.deepEqual([...Deno.readDirSync(bin)].map((e) => e.name).sort(), [".pontoon", "pontoon"]);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("install: runs at once into one bin dir all succeed and leave a complete, working set", async () => {
  const dir = tempDir();
  try {
    const bin = `${dir}/bin`;
    const runs = await Promise.all(Array.from({ length: 4 }, () => sh(PLUGIN, ["install", "--cni-bin-dir", bin])));
    for (const r of runs) assert.equal(r.code, 0, r.stderr);
    const { link } = await assertWorkingSet(bin);
    const sets = [...Deno.readDirSync(`${bin}/.pontoon`)].map((e) => e.name).filter((n) => !n.startsWith("."));
    assert.deepEqual(sets, [link.split("/")[1]]);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("install: a new bundle replaces the symlink in one rename, keeps the previous set and prunes older ones", async () => {
  const dir = tempDir();
  try {
    const bin = `${dir}/bin`;
    const tags: string[] = [];
    for (let i = 0; i < 3; i++) {
      // A distinct build: a copy of dist/ whose entry module differs.
      const copy = `${dir}/dist${i}`;
      Deno.mkdirSync(`${copy}/lib`, { recursive: true });
      for (const e of Deno.readDirSync(`${DIST}/lib`)) {
        Deno.copyFileSync(`${DIST}/lib/${e.name}`, `${copy}/lib/${e.name}`);
      }
      Deno.linkSync(`${DIST}/deno`, `${copy}/deno`);
      Deno.copyFileSync(`${DIST}/pontoon`, `${copy}/pontoon`);
      Deno.writeTextFileSync(`${copy}/lib/main.js`, `\n// build ${i}\n`, { append: true });
      const r = await sh(`${copy}/pontoon`, ["install", "--cni-bin-dir", bin]);
      assert.equal(r.code, 0, r.stderr);
      tags.push(Deno.readLinkSync(`${bin}/pontoon`).split("/")[1]);
    }
    assert.equal(new Set(tags).size, 3);
    const sets = [...Deno.readDirSync(`${bin}/.pontoon`)].map((e) => e.name).filter((n) => n !== ".lock").sort();
    assert.deepEqual(sets, [tags[1], tags[2]].sort());
    assert.equal((await sh(`${bin}/pontoon`, ["version"])).code, 0);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("install: a compiled binary is copied as one file (temp + rename), replacing a symlink", async () => {
  const dir = tempDir();
  try {
    const fake = `${dir}/pontoon-bin`;
    Deno.writeTextFileSync(fake, "#!/bin/sh\necho compiled\n");
    assert.deepEqual(detectProgram(fake, "file:///tmp/deno-compile-pontoon/main.ts"), { kind: "binary", path: fake });
    assert.throws(() => detectProgram("/usr/bin/deno", "file:///src/main.ts"), /not from sources/);
    const bin = `${dir}/bin`;
    Deno.mkdirSync(bin);
    Deno.symlinkSync("elsewhere", `${bin}/pontoon`);
    const done = await installProgram(bin, { kind: "binary", path: fake });
    assert.equal(done.kind, "binary");
    const info = Deno.lstatSync(`${bin}/pontoon`);
    assert.ok(info.isFile);
    assert.equal(info.mode! & 0o777, 0o755);
    assert.equal((await sh(`${bin}/pontoon`, [])).stdout, "compiled\n");
    assert.deepEqual([...Deno.readDirSync(bin)].map((e) => e.name), ["pontoon"]);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("install --pod-cidr writes a conflist a runtime can use: ADD through the installed copy in a node namespace", async () => {
  const dir = tempDir();
  const node = uniq("oin");
  const pod = uniq("oip");
  const bridge = uniq("oib");
  try {
    const bin = `${dir}/bin`;
    const r = await sh(PLUGIN, [
      "install",
      "--cni-bin-dir",
      bin,
      "--pod-cidr",
      "10.97.3.0/24",
      "--cni-conf-dir",
      `${dir}/net.d`,
      "--ipam-data-dir",
      `${dir}/ipam`,
      "--bridge",
      bridge,
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /wrote .*net\.d\/10-pontoon\.conflist/);
    const list = JSON.parse(Deno.readTextFileSync(`${dir}/net.d/10-pontoon.conflist`));
    assert.equal(list.cniVersion, "1.1.0");
    const conf = list.plugins[0];
    assert.equal(conf.type, "pontoon");
    assert.equal(conf.ipMasq, true, "without an agent or --cluster-cidr the plugin masquerades");
    assert.equal(conf.agentSocket, undefined);
    assert.deepEqual(conf.ipam.ranges, [[{ subnet: "10.97.3.0/24" }]]);
    const rerun = await sh(PLUGIN, [
      "install",
      "--skip-binary",
      "--pod-cidr",
      "10.97.3.0/24",
      "--cni-conf-dir",
      `${dir}/net.d`,
      "--ipam-data-dir",
      `${dir}/ipam`,
      "--bridge",
      bridge,
      "--cni-bin-dir",
      bin,
    ]);
    assert.match(rerun.stdout, /unchanged: /);

    await sh("ip", ["netns", "add", node]);
    await sh("ip", ["netns", "add", pod]);
    const add = await sh("ip", ["netns", "exec", node, `${bin}/pontoon`], {
      stdin: JSON.stringify({ ...conf, cniVersion: list.cniVersion, name: list.name }),
      env: {
        CNI_COMMAND: "ADD",
        CNI_CONTAINERID: "install-test",
        CNI_NETNS: `/run/netns/${pod}`,
        CNI_IFNAME: "eth0",
        CNI_PATH: bin,
      },
    });
    assert.equal(add.code, 0, add.stdout + add.stderr);
    assert.match(JSON.parse(add.stdout).ips[0].address, /^10\.97\.3\.\d+\/24$/);
  } finally {
    await sh("ip", ["netns", "del", pod]);
    await sh("ip", ["netns", "del", node]);
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("install: bad flags are usage errors and touch nothing", async () => {
  const dir = tempDir();
  try {
    for (
      const args of [
        ["--pod-cidr", "10.97.3.1/24"],
        ["--pod-cidr", "banana"],
        ["--pod-cidr", "10.1.0.0/24", "--pod-cidr", "10.2.0.0/24"],
        ["--cluster-cidr", "10.0.0.0/8"],
        ["--cni-bin-dir", "relative/bin"],
        ["--bridge", "a bridge"],
        ["--mtu", "9"],
        ["--pod-cidr", "10.1.0.0/24", "--conflist-version", "0.4.0"],
      ]
    ) {
      const r = await sh(PLUGIN, ["install", "--cni-bin-dir", `${dir}/bin`, "--cni-conf-dir", `${dir}/net.d`, ...args]);
      assert.equal(r.code, 2, `${args.join(" ")}: ${r.stdout} ${r.stderr}`);
    }
    assert.deepEqual([...Deno.readDirSync(dir)], []);
    const withCluster = standaloneConflist({
      podCidrs: [parseCidr("10.42.1.0/24")!],
      clusterCidrs: [parseCidr("10.42.0.0/16")!],
      cniConfDir: dir,
      cniBinDir: dir,
      ipamDataDir: "/var/lib/cni/networks",
      bridge: "pontoon0",
    });
    assert.equal((withCluster.plugins as { ipMasq: boolean }[])[0].ipMasq, false);
    assert.equal(withCluster.cniVersion, "1.1.0", "1.1.0 unless asked otherwise");
    // Runtimes on libcni before CNI 1.1 (containerd 1.7, podman 4) need 1.0.0.
    const r = await sh(PLUGIN, [
      "install",
      "--skip-binary",
      "--cni-conf-dir",
      `${dir}/net.d`,
      "--pod-cidr",
      "10.42.1.0/24",
      "--conflist-version",
      "1.0.0",
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(JSON.parse(Deno.readTextFileSync(`${dir}/net.d/10-pontoon.conflist`)).cniVersion, "1.0.0");
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
