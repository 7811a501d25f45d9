/**
 * Byte buffers: the one helper every module that reads in chunks or builds
 * wire messages needs.
 *
 * @module
 */

/** `parts` joined into one new buffer, in order. */
export function concatBytes(parts: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const p of parts) {
    out.set(p, offset);
    offset += p.length;
  }
  return out;
}
