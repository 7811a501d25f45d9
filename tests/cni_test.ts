/** Unit tests: CNI env parsing, CNI_ARGS parsing, version comparison. */
import assert from "node:assert/strict";
import { compareVersions, ifnameProblem, parseCniArgs, readCniEnv } from "../lib/cni.ts";
import { CniError } from "../lib/errors.ts";

function codeOf(fn: () => unknown): number {
  try {
    fn();
  } catch (err) {
    if (err instanceof CniError) return err.code;
    throw err;
  }
  return 0;
}

Deno.test("CNI_ARGS: Kubernetes keys parse with IgnoreUnknown; unknown keys fail without it, as in libcni", () => {
  const args = parseCniArgs(
    "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u1;FOO=bar",
  );
  assert.equal(args.ignoreUnknown, true);
  assert.equal(args.podNamespace, "ns");
  assert.equal(args.podName, "web-0");
  assert.equal(args.podUid, "u1");
  assert.equal(codeOf(() => parseCniArgs("FOO=bar")), 4);
  assert.equal(codeOf(() => parseCniArgs("IgnoreUnknown=true;FOO=bar")), 0);
  assert.equal(codeOf(() => parseCniArgs("IgnoreUnknown=TRUE;FOO=bar")), 0, "libcni lowercases booleans");
  assert.equal(codeOf(() => parseCniArgs("IgnoreUnknown=0;FOO=bar")), 4);
  assert.equal(codeOf(() => parseCniArgs("IgnoreUnknown=yes")), 4, "not a boolean in libcni");
  assert.equal(codeOf(() => parseCniArgs("a=b=c;IgnoreUnknown=1")), 4);
  assert.equal(codeOf(() => parseCniArgs("IgnoreUnknown=1;")), 4, "trailing ; is an error in libcni");
  assert.deepEqual(parseCniArgs("IP=10.0.0.5,fd00::5").ips, ["10.0.0.5", "fd00::5"]);
  assert.equal(parseCniArgs("MAC=02:00:00:00:00:01").mac, "02:00:00:00:00:01");
});

Deno.test("env: each verb requires its variables; DEL allows an empty netns; VERSION needs nothing", () => {
  const full = {
    CNI_COMMAND: "ADD",
    CNI_CONTAINERID: "c1",
    CNI_NETNS: "/run/netns/x",
    CNI_IFNAME: "eth0",
    CNI_PATH: "/opt/cni/bin",
  };
  assert.equal(readCniEnv(full).containerId, "c1");
  assert.deepEqual(readCniEnv({ ...full, CNI_PATH: "/a::/b" }).path, ["/a", "/b"]);
  assert.equal(readCniEnv({ ...full, CNI_COMMAND: "DEL", CNI_NETNS: "" }).netns, "");
  assert.equal(readCniEnv({ CNI_COMMAND: "VERSION" }).command, "VERSION");
  assert.equal(readCniEnv({ CNI_COMMAND: "STATUS", CNI_PATH: "/x" }).command, "STATUS");
  assert.equal(codeOf(() => readCniEnv({ ...full, CNI_NETNS: undefined })), 4);
  assert.equal(codeOf(() => readCniEnv({ CNI_COMMAND: "GC" })), 4);
  assert.equal(codeOf(() => readCniEnv({ ...full, CNI_CONTAINERID: "-leading-dash" })), 4);
  assert.equal(codeOf(() => readCniEnv({ ...full, CNI_CONTAINERID: "a".repeat(201) })), 4);
  assert.equal(codeOf(() => readCniEnv({ ...full, CNI_NETNS_OVERRIDE: "1" })), 0);
  try {
    readCniEnv({ CNI_COMMAND: "ADD", CNI_PATH: "/x" });
    assert.fail("expected an error");
  } catch (err) {
    assert.match((err as CniError).details, /\[CNI_CONTAINERID,CNI_IFNAME,CNI_NETNS\] missing/);
  }
});

Deno.test("interface names: kernel limits and a conservative charset", () => {
  assert.equal(ifnameProblem("eth0"), null);
  assert.equal(ifnameProblem("net1.100"), null);
  assert.match(ifnameProblem("a".repeat(16))!, /16 bytes/);
  assert.match(ifnameProblem("é".repeat(8))!, /16 bytes/);
  for (const bad of [".", "..", "a/b", "a b", "a:b", "a\nb", "", "-x"]) assert.notEqual(ifnameProblem(bad), null, bad);
});

Deno.test("versions compare numerically", () => {
  assert.ok(compareVersions("0.4.0", "1.0.0") < 0);
  assert.ok(compareVersions("1.1.0", "1.0.0") > 0);
  assert.ok(compareVersions("0.3.1", "0.3.0") > 0);
  assert.equal(compareVersions("1.0.0", "1.0.0"), 0);
});
