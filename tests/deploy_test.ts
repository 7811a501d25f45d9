/**
 * The deployment files as a cluster and a node would take them: every
 * manifest in deploy/ parsed (npm `yaml`) and checked for what the API
 * server would reject or what would break the node (image, host paths,
 * security context, probes, RBAC verbs, flags the program does not take);
 * the Dockerfile and the release workflow checked against the files and
 * make targets that exist. Neither can run here (no Docker, no denort).
 */
import assert from "node:assert/strict";
import { parseAllDocuments } from "yaml";
import { parseAgentArgs } from "../lib/agent.ts";
import { VERSION } from "../lib/version.ts";
import { PLUGIN, sh } from "./harness.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const read = (path: string) => Deno.readTextFileSync(`${ROOT}${path}`);
const exists = (path: string) => {
  try {
    Deno.statSync(`${ROOT}${path}`);
    return true;
  } catch {
    return false;
  }
};

// deno-lint-ignore no-explicit-any
type Doc = any;

function manifests(): { file: string; doc: Doc }[] {
  const out: { file: string; doc: Doc }[] = [];
  const files = [...Deno.readDirSync(`${ROOT}deploy`)].map((e) => e.name).filter((n) => /\.ya?ml$/.test(n)).sort();
  assert.ok(files.length > 0, "deploy/ has no manifests");
  for (const file of files) {
    for (const d of parseAllDocuments(read(`deploy/${file}`))) {
      assert.deepEqual(d.errors, [], `${file}: ${d.errors.join("; ")}`);
      const doc = d.toJS();
      if (doc !== null) out.push({ file, doc });
    }
  }
  return out;
}

function only(kind: string): Doc {
  const docs = manifests().filter((m) => m.doc.kind === kind);
  assert.equal(docs.length, 1, `expected one ${kind}`);
  return docs[0].doc;
}

const API_VERSIONS: Record<string, string> = {
  Namespace: "v1",
  ServiceAccount: "v1",
  ConfigMap: "v1",
  ClusterRole: "rbac.authorization.k8s.io/v1",
  ClusterRoleBinding: "rbac.authorization.k8s.io/v1",
  DaemonSet: "apps/v1",
};
const CLUSTER_SCOPED = new Set(["Namespace", "ClusterRole", "ClusterRoleBinding"]);
/** A `make TARGET` command (not the word make in a package list). */
const MAKE_CALL = /(?:^|&&|\bRUN|\brun:)\s+make ([a-z][a-z-]*)/gm;
const DNS_1123 = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
/** Host paths the DaemonSet may mount, and nothing broader. */
const ALLOWED_HOST_PATHS = new Set([
  "/opt/cni/bin",
  "/etc/cni/net.d",
  "/var/lib/cni/networks",
  "/run/pontoon",
  "/lib/modules",
  "/run/netns",
]);

function podSpec(): Doc {
  return only("DaemonSet").spec.template.spec;
}

function allContainers(): Doc[] {
  const spec = podSpec();
  return [...(spec.initContainers ?? []), ...spec.containers];
}

/** A container's command with `$(VAR)` expanded the way kubelet does (env values, ConfigMap keys). */
function expandedCommand(container: Doc, list: string[] = [...container.command, ...(container.args ?? [])]): string[] {
  const config = only("ConfigMap").data as Record<string, string>;
  const values: Record<string, string> = {};
  for (const e of container.env ?? []) {
    if (e.value !== undefined) values[e.name] = e.value;
    else if (e.valueFrom?.configMapKeyRef) values[e.name] = config[e.valueFrom.configMapKeyRef.key];
    else if (e.valueFrom?.fieldRef?.fieldPath === "spec.nodeName") values[e.name] = "node-1";
  }
  return list.map((a) =>
    a.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (_m, name) => {
      assert.ok(name in values, `${container.name}: $(${name}) is not defined in env`);
      return values[name];
    })
  );
}

Deno.test("deploy: every manifest parses, has a known kind and apiVersion, valid names and the right namespace", () => {
  const all = manifests();
  const ns = only("Namespace").metadata.name;
  for (const { file, doc } of all) {
    assert.equal(doc.apiVersion, API_VERSIONS[doc.kind], `${file}: ${doc.kind} apiVersion`);
    assert.match(doc.metadata?.name ?? "", DNS_1123, `${file}: ${doc.kind} name`);
    if (CLUSTER_SCOPED.has(doc.kind)) assert.equal(doc.metadata.namespace, undefined, `${file}: ${doc.kind}`);
    else assert.equal(doc.metadata.namespace, ns, `${file}: ${doc.kind} must be in ${ns}`);
  }
  assert.deepEqual(new Set(all.map((m) => m.doc.kind)), new Set(Object.keys(API_VERSIONS)));
});

Deno.test("deploy: RBAC grants only list/watch on nodes, bound to the DaemonSet's service account", () => {
  const role = only("ClusterRole");
  assert.deepEqual(role.rules, [{ apiGroups: [""], resources: ["nodes"], verbs: ["list", "watch"] }]);
  const binding = only("ClusterRoleBinding");
  assert.deepEqual(binding.roleRef, {
    apiGroup: "rbac.authorization.k8s.io",
    kind: "ClusterRole",
    name: role.metadata.name,
  });
  const sa = only("ServiceAccount");
  assert.deepEqual(binding.subjects, [{
    kind: "ServiceAccount",
    name: sa.metadata.name,
    namespace: sa.metadata.namespace,
  }]);
  assert.equal(podSpec().serviceAccountName, sa.metadata.name);
});

Deno.test("deploy: the DaemonSet runs on every node with host networking; selector matches; image pinned to this version", () => {
  const ds = only("DaemonSet");
  assert.deepEqual(ds.spec.selector.matchLabels, ds.spec.template.metadata.labels);
  const spec = podSpec();
  assert.equal(spec.hostNetwork, true);
  assert.equal(spec.dnsPolicy, "ClusterFirstWithHostNet");
  assert.equal(spec.priorityClassName, "system-node-critical");
  assert.ok(
    spec.tolerations.some((t: Doc) => t.operator === "Exists" && t.key === undefined && t.effect === undefined),
    "must tolerate every taint",
  );
  const workflow = parseAllDocuments(read(".github/workflows/release.yml"))[0].toJS();
  for (const c of allContainers()) {
    assert.equal(c.image, `${workflow.env.IMAGE}:${VERSION}`, `${c.name}: the image the release pushes`);
    assert.equal(c.imagePullPolicy, "IfNotPresent");
    assert.match(c.name, DNS_1123);
  }
});

Deno.test("deploy: host paths are the few Pontoon needs; every mount names a volume; shared paths match the host's", () => {
  const spec = podSpec();
  const volumes = new Map<string, Doc>(spec.volumes.map((v: Doc) => [v.name, v]));
  for (const v of spec.volumes) {
    if (!v.hostPath) continue;
    assert.ok(ALLOWED_HOST_PATHS.has(v.hostPath.path), `hostPath ${v.hostPath.path} is not one Pontoon needs`);
    assert.ok(["Directory", "DirectoryOrCreate"].includes(v.hostPath.type), `${v.name}: hostPath type`);
  }
  const used = new Set<string>();
  for (const c of allContainers()) {
    const paths = new Set<string>();
    for (const m of c.volumeMounts ?? []) {
      assert.ok(volumes.has(m.name), `${c.name}: mount of undefined volume ${m.name}`);
      assert.ok(!paths.has(m.mountPath), `${c.name}: ${m.mountPath} mounted twice`);
      paths.add(m.mountPath);
      used.add(m.name);
    }
  }
  assert.deepEqual([...volumes.keys()].filter((v) => !used.has(v)), [], "unused volumes");
  // The conflist carries --ipam-data-dir and --api-socket to the plugin,
  // which runs on the host: they must be mounted at the host's own paths.
  const agent = spec.containers.find((c: Doc) => c.name === "agent");
  const opts = parseAgentArgs(expandedCommand(agent).slice(2), {});
  const mountOf = (path: string) =>
    agent.volumeMounts.filter((m: Doc) => path === m.mountPath || path.startsWith(m.mountPath + "/"))
      .sort((a: Doc, b: Doc) => b.mountPath.length - a.mountPath.length)[0];
  for (const path of [opts.ipamDataDir, opts.apiSocket]) {
    const m = mountOf(path);
    assert.ok(m, `${path} is not on a mounted volume`);
    assert.equal(volumes.get(m.name).hostPath?.path, m.mountPath, `${path}: must be the same path on the host`);
    assert.notEqual(m.readOnly, true, `${path} must be writable`);
  }
  // Pods' netns paths are the host's; GC needs them at the same place, with later mounts propagated.
  const netns = agent.volumeMounts.find((m: Doc) => m.mountPath === "/run/netns");
  assert.equal(volumes.get(netns?.name)?.hostPath?.path, "/run/netns");
  assert.equal(netns.mountPropagation, "HostToContainer");
  assert.equal(netns.readOnly, true);
  for (const path of [opts.cniConfDir, opts.cniBinDir]) {
    const m = mountOf(path);
    assert.ok(m?.name && volumes.get(m.name).hostPath, `${path} is not a host path`);
  }
  assert.equal(volumes.get(mountOf(opts.cniConfDir).name).hostPath.path, "/etc/cni/net.d");
  assert.equal(volumes.get(mountOf(opts.cniBinDir).name).hostPath.path, "/opt/cni/bin");
});

Deno.test("deploy: security contexts: the agent has only NET_ADMIN/NET_RAW; only the node-settings step is privileged", () => {
  for (const c of allContainers()) {
    const sc = c.securityContext ?? {};
    assert.equal(sc.readOnlyRootFilesystem, true, `${c.name}: read-only root`);
    if (c.name === "node-settings") {
      assert.equal(sc.privileged, true);
      assert.ok(expandedCommand(c).includes("--skip-binary") && expandedCommand(c).includes("--node-settings"));
      continue;
    }
    assert.notEqual(sc.privileged, true, `${c.name} must not be privileged`);
    assert.equal(sc.allowPrivilegeEscalation, false, `${c.name}`);
    assert.deepEqual(sc.capabilities?.drop, ["ALL"], `${c.name}: drop ALL`);
    for (const cap of sc.capabilities?.add ?? []) {
      assert.ok(["NET_ADMIN", "NET_RAW"].includes(cap), `${c.name}: capability ${cap} is not needed`);
    }
    if (c.name === "install") assert.equal(sc.capabilities.add, undefined, "install needs no capability");
  }
});

Deno.test("deploy: commands, env and probes use flags the program accepts; probes reach the agent's socket", async () => {
  const config = only("ConfigMap");
  for (const c of allContainers()) {
    for (const e of c.env ?? []) {
      const ref = e.valueFrom?.configMapKeyRef;
      if (ref) {
        assert.equal(ref.name, config.metadata.name, `${c.name}: ConfigMap ${ref.name}`);
        assert.ok(ref.key in config.data, `${c.name}: ConfigMap key ${ref.key}`);
      }
    }
    const cmd = expandedCommand(c);
    assert.equal(cmd[0], "/usr/local/bin/pontoon", `${c.name}: the image's binary`);
    if (cmd[1] === "agent") {
      const opts = parseAgentArgs(cmd.slice(2), {});
      assert.equal(opts.nodeName, "node-1");
      assert.ok(opts.clusterCidrs.length > 0);
    } else {
      // Unknown flags are refused before --help is honoured.
      const r = await sh(PLUGIN, [...cmd.slice(1), "--help"]);
      assert.equal(r.code, 0, `${c.name}: ${cmd.slice(1).join(" ")}: ${r.stderr}`);
    }
  }
  const agent = podSpec().containers.find((c: Doc) => c.name === "agent");
  const socket = parseAgentArgs(expandedCommand(agent).slice(2), {}).apiSocket;
  const live = agent.livenessProbe, ready = agent.readinessProbe;
  assert.ok(live?.exec && ready?.exec, "exec probes (the API is a unix socket)");
  for (const probe of [live, ready]) {
    const cmd = expandedCommand(agent, probe.exec.command);
    assert.equal(cmd[0], "/usr/local/bin/pontoon");
    assert.equal(cmd[1], "status");
    const flag = cmd.find((a: string) => a.startsWith("--api-socket="));
    assert.equal(flag?.slice("--api-socket=".length) ?? "/run/pontoon/api.sock", socket);
    assert.ok(probe.timeoutSeconds >= 2 && probe.periodSeconds >= probe.timeoutSeconds);
    const r = await sh(PLUGIN, [...cmd.slice(1), "--help"]);
    assert.equal(r.code, 0, r.stderr);
  }
  assert.ok(live.exec.command.includes("--live"), "liveness must not depend on the Kubernetes API");
  assert.ok(!ready.exec.command.includes("--live"));
  assert.ok(live.failureThreshold * live.periodSeconds >= 30, "liveness too eager");
});

Deno.test("deploy: the Dockerfile copies files that exist, runs make targets that exist, ships ip and nft", () => {
  const text = read("Dockerfile").replace(/\\\n/g, " ");
  const lines = text.split("\n").map((l) => l.trim()).filter((l) => l && !l.startsWith("#"));
  const stages = lines.filter((l) => l.startsWith("FROM "));
  assert.ok(stages.length >= 2, "multi-stage");
  assert.match(stages[0], / AS build$/);
  for (const l of lines.filter((l) => l.startsWith("COPY ") && !l.includes("--from="))) {
    const parts = l.split(/\s+/).slice(1);
    for (const src of parts.slice(0, -1)) assert.ok(exists(src.replace(/\/$/, "")), `Dockerfile COPY ${src}: missing`);
  }
  const makefile = read("Makefile");
  const dockerMakes = [...text.matchAll(MAKE_CALL)].map((m) => m[1]);
  assert.deepEqual(dockerMakes, ["compile"]);
  for (const target of dockerMakes) {
    assert.match(makefile, new RegExp(`^${target}:`, "m"), `Dockerfile runs make ${target}, not a target`);
  }
  const runtime = text.slice(text.lastIndexOf("\nFROM "));
  assert.match(runtime, /apt-get install[^\n]*\biproute2\b/);
  assert.match(runtime, /apt-get install[^\n]*\bnftables\b/);
  const output = /COMPILE_OUTPUT=(\S+)/.exec(text)?.[1];
  assert.match(runtime, new RegExp(`COPY --from=build ${output} /usr/local/bin/pontoon`));
  assert.match(runtime, /ENTRYPOINT \["\/usr\/local\/bin\/pontoon"\]/);
  assert.ok(exists(".dockerignore"));
});

Deno.test("deploy: the release workflow builds x86_64 and aarch64 with make targets and files that exist", () => {
  const wf = parseAllDocuments(read(".github/workflows/release.yml"))[0].toJS();
  assert.deepEqual(wf.on.push.tags, ["v*"]);
  const targets = wf.jobs.binaries.strategy.matrix.include.map((i: Doc) => i.target).sort();
  assert.deepEqual(targets, ["aarch64-unknown-linux-gnu", "x86_64-unknown-linux-gnu"]);
  const makefile = read("Makefile");
  const text = read(".github/workflows/release.yml");
  const workflowMakes = [...text.matchAll(MAKE_CALL)].map((m) => m[1]);
  assert.ok(workflowMakes.includes("compile"), `workflow make calls: ${workflowMakes}`);
  for (const target of workflowMakes) {
    assert.match(makefile, new RegExp(`^${target}:`, "m"), `workflow runs make ${target}, not a target`);
  }
  assert.match(makefile, /COMPILE_TARGET/);
  for (const path of ["lib/version.ts", "package-lock.json", "node_modules/@deno/linux-x64-glibc/deno"]) {
    if (text.includes(path)) assert.ok(exists(path), `workflow names ${path}`);
  }
  const build = wf.jobs.image.steps.find((s: Doc) => String(s.uses).startsWith("docker/build-push-action"));
  assert.ok(exists(build.with.file), build.with.file);
  assert.equal(build.with.platforms, "linux/amd64,linux/arm64");
  for (const job of Object.values(wf.jobs) as Doc[]) {
    for (const step of job.steps) {
      if (step.uses) assert.match(step.uses, /^[\w.-]+\/[\w.-]+@v\d+$/, `pin ${step.uses} to a major version`);
    }
  }
});
