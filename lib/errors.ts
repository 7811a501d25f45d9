/**
 * The CNI error type and the spec's error codes.
 *
 * Errors are thrown deep with a code and turned into the spec's JSON error
 * document in exactly one place (`plugin.ts`).
 *
 * @module
 */

/** Error codes from the CNI spec (§5 "Error") plus Pontoon's own (100+). */
export const ErrorCode = {
  /** The config's cniVersion is not one the plugin supports. */
  IncompatibleVersion: 1,
  /** A field in the network config is not supported. */
  UnsupportedField: 2,
  /** The container is unknown or does not exist. */
  UnknownContainer: 3,
  /** A required environment variable is missing or invalid. */
  InvalidEnvironment: 4,
  /** I/O failure, such as reading stdin. */
  IoFailure: 5,
  /** The input could not be decoded (malformed JSON). */
  DecodingFailure: 6,
  /** The network config is invalid. */
  InvalidConfig: 7,
  /** The netns is the plugin's own (libcni's ErrInvalidNetNS). */
  InvalidNetns: 8,
  /** A transient condition: try again later. */
  TryAgainLater: 11,
  /** STATUS: the plugin cannot serve ADD now. */
  NotAvailable: 50,
  /** STATUS: not available, and existing pods may have limited connectivity. */
  LimitedConnectivity: 51,
  /** Pontoon: no free address is left in a range set. */
  PoolExhausted: 100,
  /** Pontoon: a requested address is held by another attachment. */
  AddressInUse: 101,
  /** Pontoon: a system operation (ip, nft, sysctl, file) failed. */
  SystemFailure: 102,
  /** Pontoon: the interface already exists (ADD without DEL). */
  InterfaceExists: 103,
  /** Pontoon: CHECK found the attachment differs from prevResult. */
  CheckFailed: 104,
  /** Pontoon: a delegated plugin failed without a parsable error. */
  DelegateFailure: 105,
} as const;

/** Short messages for each code, used as the error document's `msg`. */
const MESSAGES: Record<number, string> = {
  1: "Incompatible CNI version",
  2: "Unsupported field in network configuration",
  3: "Container unknown or does not exist",
  4: "Invalid necessary environment variables",
  5: "I/O failure",
  6: "Failed to decode content",
  7: "Invalid network config",
  8: "Invalid network namespace",
  11: "Try again later",
  50: "Plugin not available",
  51: "Plugin not available; existing containers may have limited connectivity",
  100: "No address available",
  101: "Requested address in use",
  102: "System operation failed",
  103: "Interface already exists",
  104: "Attachment check failed",
  105: "Delegated plugin failed",
};

/**
 * An error with a CNI error code; `details` names the field or the cause.
 *
 * @example
 * ```ts
 * throw new CniError(ErrorCode.InvalidConfig, "mtu: 70000 is outside 68..65535");
 * ```
 */
export class CniError extends Error {
  /** The spec's (or Pontoon's 100+) error code. */
  readonly code: number;
  /** The human-readable cause; becomes the error document's `details`. */
  readonly details: string;

  /** Makes an error with `code` and `details`. */
  constructor(code: number, details: string, options?: ErrorOptions) {
    super(`${MESSAGES[code] ?? "Error"}: ${details}`, options);
    this.name = "CniError";
    this.code = code;
    this.details = details;
  }

  /** The spec's `msg` for this code. */
  get msg(): string {
    return MESSAGES[this.code] ?? "Error";
  }
}

/** Wraps any thrown value as a CniError (system failure unless it already is one). */
export function asCniError(err: unknown): CniError {
  if (err instanceof CniError) return err;
  const text = err instanceof Error ? err.message : String(err);
  return new CniError(ErrorCode.SystemFailure, text, { cause: err });
}
