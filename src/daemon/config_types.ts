/**
 * The shapes of the daemon's configuration once parsed (config.ts parses
 * them): kept apart so that config.ts and config_checks.ts both import them
 * and neither imports the other.
 * @module
 */
import type { LivenessOptions } from "../ivbs/liveness.ts";
import type { ProxyAddress } from "../ivbs/wire.ts";

export interface ListenAddress {
  host: string;
  port: number;
}

/** A mount to make at start, with its user's credentials already looked up. */
export interface ConfiguredMount {
  /** "/dev/nbdN" or "auto" (first free device). */
  device: string;
  image: string;
  username: string;
  password: string;
  readOnly: boolean;
  /** Connections (IVBS sessions) of the device; absent = nbd.connections. */
  connections?: number;
}

export interface IvbsSettings {
  proxies: ProxyAddress[];
  deadPeerTimeoutMs: number;
  ioTimeoutMs: number;
  connectTimeoutMs: number;
  backoff: { initialMs: number; maxMs: number };
  maxInFlightBytes?: number;
  /** When to probe a proxy that looks hung, and how long it has to answer. */
  liveness: LivenessOptions;
}

export interface NbdSettings {
  /** How many devices the daemon manages: /dev/nbd0 … /dev/nbd{devices-1}. */
  devices: number;
  blockSize: number;
  /** Kernel NBD_SET_TIMEOUT; 0 = none (the IVBS layer owns timeouts). */
  timeoutS: number;
  /** Kernel requests in flight per device. */
  maxInFlight: number;
  /**
   * How devices are attached: "netlink" (they outlive the daemon), "ioctl"
   * (the device goes with the daemon), "auto" = netlink where the kernel has it.
   */
  attach: "auto" | "netlink" | "ioctl";
  /** Netlink: how long a device's requests wait for a (new) daemon before failing, in s. */
  deadConnTimeoutS: number;
  /**
   * Netlink with timeoutS 0: the block layer's timer per request, in s. After a
   * restart, requests the old daemon never answered are resent when it fires.
   */
  requeueAfterS: number;
  /** Connections (sockets, one IVBS session each) per kernel device, 1..16; netlink only. */
  connections: number;
}

/** An NBD export to serve from start, with its user's credentials already looked up. */
export interface ConfiguredExport {
  /** The NBD export name clients ask for (nbd+unix:///NAME?socket=…). */
  name: string;
  image: string;
  username: string;
  password: string;
  readOnly: boolean;
}

export interface ExportSettings {
  /** Unix socket the exports listen on (mode 0600); default `<stateDir>/nbd.sock`. */
  socket: string;
  /** Optional TCP listener, loopback only (NBD has no authentication without TLS). */
  tcp?: ListenAddress;
  items: ConfiguredExport[];
}

export interface DaemonConfig {
  /** Which format the file was in. */
  format: "current" | "2013";
  http: { listen: ListenAddress; token?: string };
  ivbs: IvbsSettings;
  nbd: NbdSettings;
  mounts: ConfiguredMount[];
  /** Every user the config names, for mounts taken over from a previous daemon. */
  users: { username: string; password: string }[];
  /** Directory for runtime files such as the export socket; created with mode 0700. */
  stateDir: string;
  /**
   * The credential store (credential_store.ts): what live mounts and API
   * exports need to log in again after a restart. Default on the runtime
   * tmpfs (/run/ivbsnetd for root), never outliving a reboot unless
   * `credentials.keepInStateDir` or `credentials.path` put it elsewhere.
   */
  credentialsPath: string;
  exports: ExportSettings;
  /** Retries of desired mounts and exports that are not up: capped, jittered, forever. */
  reconcile: { backoff: { initialMs: number; maxMs: number } };
}
