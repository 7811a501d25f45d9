/**
 * Pontoon's release version (one place; the CLI, the agent's status and
 * the release workflow read it).
 *
 * @module
 */

/** Pontoon's version. */
export const VERSION = "0.1.0";
