/**
 * A client of the kernel's generic-netlink "nbd" family over one AF_NETLINK
 * socket: resolves the family, then CONNECT / RECONFIGURE / DISCONNECT /
 * STATUS, one request at a time, each acknowledged (NLM_F_ACK) so an error
 * comes back as an errno and success is never guessed.
 *
 * The family exists only once the nbd module is loaded and only in the initial
 * network namespace; CONNECT, RECONFIGURE and DISCONNECT need CAP_SYS_ADMIN.
 * @module
 */
import {
  close,
  errnoName,
  POLLIN,
  pollOnWorker,
  recvNow,
  SOCK_CLOEXEC,
  socket,
} from "../../ffi/libc.ts";
import {
  AF_NETLINK,
  bindNetlink,
  NETLINK_GENERIC,
  sendOnWorker,
  SOCK_RAW,
} from "../../ffi/netlink.ts";
import {
  decodeNetlinkMessages,
  encodeGetFamily,
  encodeNbdConnect,
  encodeNbdDisconnect,
  encodeNbdReconfigure,
  encodeNbdStatus,
  type GenlFamily,
  NBD_GENL_FAMILY,
  NbdCmd,
  type NbdConnectRequest,
  type NbdDeviceStatus,
  type NbdReconfigureRequest,
  type NetlinkMessage,
  parseFamily,
  parseNbdIndex,
  parseNbdStatus,
} from "./netlink_wire.ts";

/** The kernel refused a netlink request. */
export class NetlinkError extends Error {
  readonly code = "NETLINK";
  readonly errnoName: string;
  constructor(readonly request: string, readonly errno: number) {
    const name = errnoName(errno);
    super(`${request} failed: ${name}`);
    this.name = "NetlinkError";
    this.errnoName = name;
  }
}

const RECEIVE_BYTES = 64 * 1024;

export class NbdNetlink {
  readonly #fd: number;
  readonly family: GenlFamily;
  #seq = Math.floor(Math.random() * 0x7fff_0000) + 1;
  #queue: Promise<unknown> = Promise.resolve();
  #closed = false;
  readonly #buffer = new Uint8Array(RECEIVE_BYTES);

  private constructor(fd: number, family: GenlFamily) {
    this.#fd = fd;
    this.family = family;
  }

  /**
   * Opens a socket and resolves the "nbd" family; null when the kernel has no
   * such family (module not loaded, or another network namespace).
   */
  static async open(): Promise<NbdNetlink | null> {
    const fd = openSocket();
    try {
      const seq = 1;
      const replies = await exchange(fd, encodeGetFamily(NBD_GENL_FAMILY, seq), seq, "GETFAMILY")
        .catch((error) => {
          if (error instanceof NetlinkError && error.errnoName === "ENOENT") return null;
          throw error;
        });
      if (replies === null) {
        close(fd);
        return null;
      }
      const reply = replies.find((m) => m.kind === "genl");
      if (reply?.kind !== "genl") throw new Error("GETFAMILY nbd: no family in the reply");
      return new NbdNetlink(fd, parseFamily(reply.attrs));
    } catch (error) {
      close(fd);
      throw error;
    }
  }

  /** CONNECT; resolves with the index of the device the kernel set up. */
  connect(request: NbdConnectRequest): Promise<number> {
    return this.#request("CONNECT", (seq) => encodeNbdConnect(this.family.id, seq, request))
      .then((replies) => {
        for (const reply of replies) {
          if (reply.kind === "genl" && reply.cmd === NbdCmd.CONNECT) {
            const index = parseNbdIndex(reply.attrs);
            if (index !== null) return index;
          }
        }
        if (request.index !== undefined) return request.index;
        throw new Error("NBD CONNECT succeeded without telling the device index");
      });
  }

  /**
   * RECONFIGURE with new sockets. Success does not mean a socket was
   * installed: the kernel drops it silently when none of the device's is dead.
   */
  async reconfigure(request: NbdReconfigureRequest): Promise<void> {
    await this.#request(
      "RECONFIGURE",
      (seq) => encodeNbdReconfigure(this.family.id, seq, request),
    );
  }

  /** DISCONNECT: the kernel sends NBD_CMD_DISC, shuts the socket down and fails what is queued. */
  async disconnect(index: number): Promise<void> {
    await this.#request("DISCONNECT", (seq) => encodeNbdDisconnect(this.family.id, seq, index));
  }

  /** STATUS of one device (a one-entry list, empty when it does not exist) or all. */
  status(index?: number): Promise<NbdDeviceStatus[]> {
    return this.#request("STATUS", (seq) => encodeNbdStatus(this.family.id, seq, index))
      .then((replies) =>
        replies.flatMap((r) =>
          r.kind === "genl" && r.cmd === NbdCmd.STATUS ? parseNbdStatus(r.attrs) : []
        )
      );
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    // Wait for a request in progress: its recv must not see a recycled fd.
    this.#queue.finally(() => close(this.#fd));
  }

  #request(
    name: string,
    encode: (seq: number) => Uint8Array,
  ): Promise<NetlinkMessage[]> {
    const run = async () => {
      if (this.#closed) throw new Error(`NBD netlink ${name}: socket closed`);
      const seq = this.#seq = (this.#seq + 1) >>> 0 || 1;
      return await exchange(this.#fd, encode(seq), seq, `NBD ${name}`, this.#buffer);
    };
    const result = this.#queue.then(run, run);
    this.#queue = result.catch(() => {});
    return result;
  }
}

function openSocket(): number {
  const fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_GENERIC);
  try {
    bindNetlink(fd);
    return fd;
  } catch (error) {
    close(fd);
    throw error;
  }
}

/**
 * Sends one request and collects what comes back with its sequence number
 * until the acknowledgement; throws a NetlinkError on an error reply.
 */
async function exchange(
  fd: number,
  message: Uint8Array,
  seq: number,
  name: string,
  buffer = new Uint8Array(RECEIVE_BYTES),
): Promise<NetlinkMessage[]> {
  await sendOnWorker(fd, message);
  const replies: NetlinkMessage[] = [];
  for (;;) {
    const n = recvNow(fd, buffer);
    if (n === null) {
      await pollOnWorker(fd, POLLIN);
      continue;
    }
    // A copy: the replies keep views into it while the buffer takes the next datagram.
    for (const reply of decodeNetlinkMessages(buffer.slice(0, n))) {
      if (reply.seq !== seq) continue; // a stale reply to an earlier, abandoned request
      if (reply.kind === "error") throw new NetlinkError(name, reply.errno);
      if (reply.kind === "ack") return replies;
      replies.push(reply);
    }
  }
}
