/**
 * rtnetlink through libc: the few link, address and route requests on the
 * per-pod hot path (create the veth pair, configure the pod side, delete
 * the host veth) and CHECK's view of the pod, sent over a NETLINK_ROUTE
 * socket instead of spawning `ip`. The rest (the bridge, once per node;
 * GC) still goes through `ip.ts`.
 *
 * Each request is built as data (nested attributes), sent with
 * NLM_F_ACK, and answered synchronously by the kernel before `write`
 * returns, so a request costs tens of microseconds rather than a 2–5 ms
 * process spawn. A socket opened while the thread is inside a pod's netns
 * stays bound to that netns, so the pod side is configured without
 * running anything inside it (see `netns.ts` `inNetns`).
 *
 * @module
 */
import { concatBytes } from "./bytes.ts";
import { type Cidr, formatCidr, type Ip } from "./addr.ts";
import { errno, errnoText, libc, LibcError } from "./libc.ts";

const AF_INET = 2;
const AF_INET6 = 10;
const AF_NETLINK = 16;
const SOCK_RAW_CLOEXEC = 3 | 0o2000000;
const NETLINK_ROUTE = 0;
const SOL_NETLINK = 270;
const NETLINK_EXT_ACK = 11;

const RTM_NEWLINK = 16;
const RTM_DELLINK = 17;
const RTM_GETLINK = 18;
const RTM_NEWADDR = 20;
const RTM_GETADDR = 22;
const RTM_NEWROUTE = 24;
const RTM_GETROUTE = 26;

const NLM_F_REQUEST = 0x1;
const NLM_F_ACK = 0x4;
const NLM_F_DUMP = 0x300;
const NLM_F_EXCL = 0x200;
const NLM_F_CREATE = 0x400;
const NLM_F_CAPPED = 0x100;
const NLM_F_ACK_TLVS = 0x200;
const NLMSG_ERROR = 2;
const NLMSG_DONE = 3;
const NLMSGERR_ATTR_MSG = 1;

const IFLA_ADDRESS = 1;
const IFLA_IFNAME = 3;
const IFLA_MTU = 4;
const IFLA_MASTER = 10;
const IFLA_LINKINFO = 18;
const IFLA_IFALIAS = 20;
const IFLA_NET_NS_FD = 28;
const IFLA_INFO_KIND = 1;
const IFLA_INFO_DATA = 2;
const VETH_INFO_PEER = 1;
const IFF_UP = 0x1;

const IFA_ADDRESS = 1;
const IFA_LOCAL = 2;
const IFA_F_NODAD = 0x2;

const RTA_DST = 1;
const RTA_OIF = 4;
const RTA_GATEWAY = 5;
const RTA_TABLE = 15;
const RT_TABLE_MAIN = 254;
const RTPROT_BOOT = 3;
const RT_SCOPE_UNIVERSE = 0;
const RT_SCOPE_LINK = 253;
const RTN_UNICAST = 1;

/** A request the kernel refused, with its errno and message. */
export class NetlinkError extends Error {
  /** The (positive) errno the kernel answered. */
  readonly errno: number;
  /** Makes an error for `what` with `code` and the kernel's extended message. */
  constructor(what: string, code: number, kernelMessage?: string) {
    super(`${what}: ${errnoText(code)}${kernelMessage ? `: ${kernelMessage}` : ""}`);
    this.name = "NetlinkError";
    this.errno = code;
  }
}

/** A netlink attribute: a type and either raw bytes or nested attributes. */
type Attr = [type: number, value: Uint8Array | Attr[]];

const encoder = new TextEncoder();

function align4(n: number): number {
  return (n + 3) & ~3;
}

function attrLength(attr: Attr): number {
  const [, value] = attr;
  const payload = value instanceof Uint8Array ? value.length : value.reduce((n, a) => n + align4(attrLength(a)), 0);
  return 4 + payload;
}

function writeAttrs(view: DataView, bytes: Uint8Array, offset: number, attrs: Attr[]): number {
  for (const attr of attrs) {
    const [type, value] = attr;
    const length = attrLength(attr);
    view.setUint16(offset, length, true);
    view.setUint16(offset + 2, type, true);
    if (value instanceof Uint8Array) bytes.set(value, offset + 4);
    else writeAttrs(view, bytes, offset + 4, value);
    offset += align4(length);
  }
  return offset;
}

function u32(value: number): Uint8Array {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, value, true);
  return out;
}

function cstr(text: string): Uint8Array {
  return encoder.encode(text + "\0");
}

function mac(text: string): Uint8Array {
  return Uint8Array.from(text.split(":"), (h) => parseInt(h, 16));
}

function ipBytes(ip: Ip): Uint8Array {
  const count = ip.family === 4 ? 4 : 16;
  const out = new Uint8Array(count);
  let v = ip.value;
  for (let i = count - 1; i >= 0; i--) {
    out[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  return out;
}

/** `struct ifinfomsg` (16 bytes). */
function ifinfomsg(index: number, flags: number, change: number): Uint8Array {
  const out = new Uint8Array(16);
  const view = new DataView(out.buffer);
  view.setInt32(4, index, true);
  view.setUint32(8, flags, true);
  view.setUint32(12, change, true);
  return out;
}

/** The bytes of a nested attribute list, for attributes that embed a header first. */
function attrBytes(attrs: Attr[]): Uint8Array {
  const size = attrs.reduce((n, a) => n + align4(attrLength(a)), 0);
  const out = new Uint8Array(size);
  writeAttrs(new DataView(out.buffer), out, 0, attrs);
  return out;
}

/** An open NETLINK_ROUTE socket, bound to the netns it was opened in. */
export class RtnlSocket {
  readonly #fd: number;
  #seq = 1;
  readonly #buf = new Uint8Array(64 * 1024);

  private constructor(fd: number) {
    this.#fd = fd;
  }

  /** Opens a socket in the calling thread's current network namespace. */
  static open(): RtnlSocket {
    const c = libc();
    const fd = c.socket(AF_NETLINK, SOCK_RAW_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0) throw new LibcError("socket", "netlink", errno());
    // Ask for the kernel's own error text (extended ACK); harmless if unsupported.
    c.setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, u32(1) as Uint8Array<ArrayBuffer>, 4);
    return new RtnlSocket(fd);
  }

  /** Closes the socket. */
  close(): void {
    libc().close(this.#fd);
  }

  /**
   * Sends one request with NLM_F_ACK and returns the kernel's reply
   * messages before the ACK; throws NetlinkError on a negative ACK.
   */
  request(what: string, type: number, flags: number, header: Uint8Array, attrs: Attr[] = []): Uint8Array[] {
    return this.#exchange(what, type, NLM_F_REQUEST | NLM_F_ACK | flags, header, attrs);
  }

  /** Sends a dump request and returns every reply message's payload. */
  dump(what: string, type: number, header: Uint8Array): Uint8Array[] {
    return this.#exchange(what, type, NLM_F_REQUEST | NLM_F_DUMP, header, []);
  }

  #exchange(what: string, type: number, flags: number, header: Uint8Array, attrs: Attr[]): Uint8Array[] {
    const c = libc();
    const seq = this.#seq++;
    const body = concatBytes([header, attrBytes(attrs)]);
    const msg = new Uint8Array(16 + body.length);
    const view = new DataView(msg.buffer);
    view.setUint32(0, msg.length, true);
    view.setUint16(4, type, true);
    view.setUint16(6, flags, true);
    view.setUint32(8, seq, true);
    msg.set(body, 16);
    if (Number(c.write(this.#fd, msg, BigInt(msg.length))) !== msg.length) {
      throw new LibcError("write", "netlink", errno());
    }
    const replies: Uint8Array[] = [];
    for (;;) {
      const n = Number(c.read(this.#fd, this.#buf, BigInt(this.#buf.length)));
      if (n < 0) throw new LibcError("read", "netlink", errno());
      const rv = new DataView(this.#buf.buffer, 0, n);
      for (let off = 0; off + 16 <= n;) {
        const len = rv.getUint32(off, true);
        const mtype = rv.getUint16(off + 4, true);
        const mflags = rv.getUint16(off + 6, true);
        const mseq = rv.getUint32(off + 8, true);
        if (len < 16) break;
        if (mseq === seq) {
          if (mtype === NLMSG_DONE) return replies;
          if (mtype === NLMSG_ERROR) {
            const code = -rv.getInt32(off + 16, true);
            if (code === 0) return replies;
            throw new NetlinkError(what, code, extAckMessage(this.#buf, off, len, mflags));
          }
          replies.push(this.#buf.slice(off + 16, off + len));
        }
        off += align4(len);
      }
    }
  }

  /** The ifindex of `name` in this socket's netns; throws NetlinkError (19) when absent. */
  linkIndex(name: string): number {
    const link = this.link(name);
    if (!link) throw new NetlinkError(`link ${name}`, 19);
    return link.index;
  }

  /** `name`'s ifindex and MAC in this socket's netns, or null when there is no such link. */
  link(name: string): { index: number; mac?: string } | null {
    let reply: Uint8Array | undefined;
    try {
      [reply] = this.request(`link ${name}`, RTM_GETLINK, 0, ifinfomsg(0, 0, 0), [[IFLA_IFNAME, cstr(name)]]);
    } catch (err) {
      if (err instanceof NetlinkError && err.errno === 19) return null;
      throw err;
    }
    if (!reply) return null;
    const address = parseAttrs(reply, 16).get(IFLA_ADDRESS);
    return {
      index: new DataView(reply.buffer, reply.byteOffset).getInt32(4, true),
      mac: address ? [...address].map((b) => b.toString(16).padStart(2, "0")).join(":") : undefined,
    };
  }
}

/** The attributes of a message payload after its fixed header of `offset` bytes, by type. */
function parseAttrs(payload: Uint8Array, offset: number): Map<number, Uint8Array> {
  const out = new Map<number, Uint8Array>();
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  for (let p = offset; p + 4 <= payload.length;) {
    const len = view.getUint16(p, true);
    if (len < 4) break;
    const type = view.getUint16(p + 2, true) & 0x3fff; // without NLA_F_NESTED / NLA_F_NET_BYTEORDER
    if (!out.has(type)) out.set(type, payload.subarray(p + 4, p + len));
    p += align4(len);
  }
  return out;
}

function ipFrom(bytes: Uint8Array): Ip {
  let value = 0n;
  for (const b of bytes) value = (value << 8n) | BigInt(b);
  return { family: bytes.length === 4 ? 4 : 6, value };
}

/**
 * The addresses on link `index`, as `ip addr show dev` lists them: every
 * family and scope, or with `globalOnly` none of link or host scope.
 */
export function linkAddresses(sock: RtnlSocket, index: number, options: { globalOnly?: boolean } = {}): Cidr[] {
  const out: Cidr[] = [];
  for (const reply of sock.dump("list addresses", RTM_GETADDR, new Uint8Array(8))) {
    const view = new DataView(reply.buffer, reply.byteOffset, reply.byteLength);
    if (view.getUint32(4, true) !== index) continue;
    // ifaddrmsg: family, prefixlen, flags, scope, index.
    if (options.globalOnly && reply[3] >= RT_SCOPE_LINK) continue;
    const attrs = parseAttrs(reply, 8);
    const bytes = attrs.get(IFA_LOCAL) ?? attrs.get(IFA_ADDRESS);
    if (bytes && (bytes.length === 4 || bytes.length === 16)) out.push({ ...ipFrom(bytes), prefix: reply[1] });
  }
  return out;
}

/** A route of the main table. */
export interface MainRoute {
  dst: Cidr;
  gateway?: Ip;
  /** Outgoing ifindex, when the route names one. */
  oif?: number;
}

/** Every route of the main table (both families), as `ip route show table main` lists them. */
export function mainRoutes(sock: RtnlSocket): MainRoute[] {
  const out: MainRoute[] = [];
  for (const reply of sock.dump("list routes", RTM_GETROUTE, new Uint8Array(12))) {
    const family = reply[0];
    if (family !== AF_INET && family !== AF_INET6) continue;
    const attrs = parseAttrs(reply, 12);
    const tableAttr = attrs.get(RTA_TABLE);
    const table = tableAttr ? new DataView(tableAttr.buffer, tableAttr.byteOffset).getUint32(0, true) : reply[4];
    if (table !== RT_TABLE_MAIN) continue;
    const dstBytes = attrs.get(RTA_DST);
    const dst: Cidr = dstBytes
      ? { ...ipFrom(dstBytes), prefix: reply[1] }
      : { family: family === AF_INET ? 4 : 6, value: 0n, prefix: 0 };
    const gw = attrs.get(RTA_GATEWAY);
    const oif = attrs.get(RTA_OIF);
    out.push({
      dst,
      gateway: gw ? ipFrom(gw) : undefined,
      oif: oif ? new DataView(oif.buffer, oif.byteOffset).getUint32(0, true) : undefined,
    });
  }
  return out;
}

function extAckMessage(buf: Uint8Array, off: number, len: number, flags: number): string | undefined {
  if ((flags & NLM_F_ACK_TLVS) === 0) return undefined;
  // struct nlmsgerr: errno, then the request's header, then (unless capped)
  // the request's payload; the TLVs follow.
  const view = new DataView(buf.buffer);
  const capped = (flags & NLM_F_CAPPED) !== 0;
  let p = off + 16 + 4 + (capped ? 16 : align4(view.getUint32(off + 20, true)));
  while (p + 4 <= off + len) {
    const alen = view.getUint16(p, true);
    const atype = view.getUint16(p + 2, true);
    if (alen < 4) break;
    if (atype === NLMSGERR_ATTR_MSG) {
      return new TextDecoder().decode(buf.subarray(p + 4, p + alen)).replace(/\0.*$/s, "");
    }
    p += align4(alen);
  }
  return undefined;
}

/** A veth pair as `addVeth` creates it. */
export interface VethRequest {
  host: string;
  hostMac: string;
  mtu: number;
  /** ifindex of the bridge the host end joins. */
  masterIndex: number;
  pod: string;
  podMac: string;
  /** An open fd of the pod's netns file. */
  netnsFd: number;
}

/**
 * Creates the veth pair in one RTM_NEWLINK (the same request as
 * `ip link add HOST mtu M address MAC master BR up type veth peer name POD
 * mtu M address MAC netns PATH`). Throws NetlinkError (17: exists).
 */
export function createVeth(sock: RtnlSocket, v: VethRequest): void {
  const peer = concatBytes([
    ifinfomsg(0, 0, 0),
    attrBytes([
      [IFLA_IFNAME, cstr(v.pod)],
      [IFLA_MTU, u32(v.mtu)],
      [IFLA_ADDRESS, mac(v.podMac)],
      [IFLA_NET_NS_FD, u32(v.netnsFd)],
    ]),
  ]);
  sock.request(`create veth ${v.host}`, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, ifinfomsg(0, IFF_UP, IFF_UP), [
    [IFLA_IFNAME, cstr(v.host)],
    [IFLA_MTU, u32(v.mtu)],
    [IFLA_ADDRESS, mac(v.hostMac)],
    [IFLA_MASTER, u32(v.masterIndex)],
    [IFLA_LINKINFO, [[IFLA_INFO_KIND, encoder.encode("veth")], [IFLA_INFO_DATA, [[VETH_INFO_PEER, peer]]]]],
  ]);
}

/** Deletes link `name`; false when there was no such link. */
export function deleteLink(sock: RtnlSocket, name: string): boolean {
  try {
    sock.request(`delete link ${name}`, RTM_DELLINK, 0, ifinfomsg(0, 0, 0), [[IFLA_IFNAME, cstr(name)]]);
    return true;
  } catch (err) {
    if (err instanceof NetlinkError && err.errno === 19) return false;
    throw err;
  }
}

/**
 * Sets the alias (`ip link set NAME alias TEXT`) of link `name`. A separate
 * request: the kernel ignores IFLA_IFALIAS when it creates a link.
 */
export function setLinkAlias(sock: RtnlSocket, name: string, alias: string): void {
  sock.request(`set ${name} alias`, RTM_NEWLINK, 0, ifinfomsg(0, 0, 0), [
    [IFLA_IFNAME, cstr(name)],
    [IFLA_IFALIAS, encoder.encode(alias)],
  ]);
}

/** Sets link `index` up. */
export function setLinkUp(sock: RtnlSocket, index: number, name: string): void {
  sock.request(`set ${name} up`, RTM_NEWLINK, 0, ifinfomsg(index, IFF_UP, IFF_UP));
}

/** Adds an address (like `ip addr add CIDR dev IF [nodad]`). */
export function addAddress(sock: RtnlSocket, index: number, cidr: Cidr, nodad: boolean): void {
  const header = new Uint8Array(8);
  header[0] = cidr.family === 4 ? AF_INET : AF_INET6;
  header[1] = cidr.prefix;
  header[2] = nodad ? IFA_F_NODAD : 0;
  header[3] = RT_SCOPE_UNIVERSE;
  new DataView(header.buffer).setUint32(4, index, true);
  const bytes = ipBytes(cidr);
  sock.request(`add address ${formatCidr(cidr)}`, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, header, [
    [IFA_LOCAL, bytes],
    [IFA_ADDRESS, bytes],
  ]);
}

/**
 * Adds a main-table route (like `ip route add DST [via GW] dev IF`): link
 * scope for an IPv4 route without a gateway, universe otherwise.
 */
export function addRoute(sock: RtnlSocket, index: number, dst: Cidr, gw: Ip | undefined, what: string): void {
  const header = new Uint8Array(12);
  header[0] = dst.family === 4 ? AF_INET : AF_INET6;
  header[1] = dst.prefix;
  header[4] = RT_TABLE_MAIN;
  header[5] = RTPROT_BOOT;
  header[6] = dst.family === 4 && !gw ? RT_SCOPE_LINK : RT_SCOPE_UNIVERSE;
  header[7] = RTN_UNICAST;
  const attrs: Attr[] = [];
  if (dst.prefix > 0) attrs.push([RTA_DST, ipBytes(dst)]);
  if (gw) attrs.push([RTA_GATEWAY, ipBytes(gw)]);
  attrs.push([RTA_OIF, u32(index)]);
  sock.request(what, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, header, attrs);
}
