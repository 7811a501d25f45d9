/**
 * The command line for people (`pontoon version`, `pontoon --help`, ...).
 * Loaded only when `CNI_COMMAND` is unset, so the plugin path never pays
 * for it.
 *
 * @module
 */
import { SUPPORTED_VERSIONS } from "./cni.ts";

import { VERSION } from "./version.ts";

const USAGE = `pontoon ${VERSION}: a CNI bridge plugin for Kubernetes nodes

As a CNI plugin, pontoon is run by the container runtime with CNI_COMMAND
set (ADD, DEL, CHECK, STATUS, GC, VERSION) and the network config on stdin.
CNI spec versions: ${SUPPORTED_VERSIONS.join(", ")}.

Usage:
  pontoon agent [flags]  the node agent (pod CIDRs from Kubernetes, conflist, routes); --help for flags
  pontoon version        print the version and supported CNI versions
  pontoon --help         this text
`;

/** Runs the command line; returns the exit code. */
export function cliMain(args: string[]): Promise<number> {
  const [command] = args;
  switch (command) {
    case "version":
    case "--version":
      console.log(`pontoon ${VERSION} (CNI ${SUPPORTED_VERSIONS.join(", ")})`);
      return Promise.resolve(0);
    case "agent":
      return import("./agent.ts").then(({ agentMain }) => agentMain(args.slice(1)));
    case undefined:
    case "help":
    case "--help":
    case "-h":
      // Like the reference plugins' skel: an "about" text, exit 0.
      Deno.stderr.writeSync(new TextEncoder().encode(USAGE));
      return Promise.resolve(0);
    default:
      Deno.stderr.writeSync(new TextEncoder().encode(`pontoon: unknown command "${command}"\n\n${USAGE}`));
      return Promise.resolve(2);
  }
}
