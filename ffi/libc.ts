/**
 * The few libc calls ivbsnetd needs, through Deno FFI: open, close,
 * socket, connect, setsockopt, ioctl, recv / send, and poll on a worker thread. Each
 * wrapper throws a LibcError naming the call and errno on failure. No NBD or
 * IVBS semantics here; the NBD ioctl numbers are only numbers.
 *
 * The one libc handle and the one errno table of the project: ffi/netlink.ts
 * and ffi/rlimit.ts call their symbols through `libc()` and name errnos with
 * `errnoName` (one dlopen, one table).
 *
 * Threads and errno: synchronous symbols run on the calling (main) thread, so
 * `__errno_location` read right after a failure is that call's errno. The
 * `nonblocking` symbols (poll, ioctl for NBD_DO_IT) run on a Deno worker
 * thread, whose errno we cannot read, so their wrappers return raw results.
 * Data moves with synchronous MSG_DONTWAIT calls and only WAITS on a worker
 * thread: a worker-thread hop costs ~25 us here and over 1 ms under the VM's
 * emulation, while a ready socket needs none.
 *
 * Needs `--allow-ffi`; the library is opened on first use.
 * @module
 */

/** ioctl request numbers from linux/nbd.h: `_IO(0xab, n)` = (0xab << 8) | n. */
export const NbdIoctl = {
  SET_SOCK: 0xab00,
  SET_BLKSIZE: 0xab01,
  SET_SIZE: 0xab02,
  DO_IT: 0xab03,
  CLEAR_SOCK: 0xab04,
  CLEAR_QUE: 0xab05,
  PRINT_DEBUG: 0xab06,
  SET_SIZE_BLOCKS: 0xab07,
  DISCONNECT: 0xab08,
  SET_TIMEOUT: 0xab09,
  SET_FLAGS: 0xab0a,
} as const;

const IOCTL_NAMES = new Map<number, string>(
  Object.entries(NbdIoctl).map(([name, value]) => [value, `NBD_${name}`]),
);

/** Flags and constants from the Linux x86-64 / aarch64 headers. */
export const O_RDWR = 0o2;
export const O_CLOEXEC = 0o2000000;
export const AF_UNIX = 1;
export const SOCK_STREAM = 1;
export const SOCK_DGRAM = 2;
export const SOCK_CLOEXEC = 0o2000000;
/** setsockopt(2) level and options (asm-generic/socket.h). */
export const SOL_SOCKET = 1;
export const SO_SNDBUF = 7;
/** Like SO_SNDBUF but above net.core.wmem_max; needs CAP_NET_ADMIN. */
export const SO_SNDBUFFORCE = 32;
/** recv/send flag: fail with EAGAIN instead of blocking. */
const MSG_DONTWAIT = 0x40;
/** send(2) flag: EPIPE instead of SIGPIPE when the peer is gone. */
const MSG_NOSIGNAL = 0x4000;
/** poll(2) events. */
export const POLLIN = 0x001;
const EINTR = 4;
const EAGAIN = 11;

/**
 * errno names for the values libc calls and the kernel's netlink replies can
 * return (asm-generic/errno-base.h, errno.h).
 */
const ERRNO_NAMES: Record<number, string> = {
  1: "EPERM",
  2: "ENOENT",
  4: "EINTR",
  5: "EIO",
  6: "ENXIO",
  9: "EBADF",
  11: "EAGAIN",
  12: "ENOMEM",
  13: "EACCES",
  16: "EBUSY",
  19: "ENODEV",
  22: "EINVAL",
  24: "EMFILE",
  25: "ENOTTY",
  28: "ENOSPC",
  32: "EPIPE",
  95: "EOPNOTSUPP",
  104: "ECONNRESET",
  107: "ENOTCONN",
  110: "ETIMEDOUT",
};

/** "EBUSY" for 16; "errno N" for a value the table does not name. */
export function errnoName(errno: number): string {
  return ERRNO_NAMES[errno] ?? `errno ${errno}`;
}

/** A failed libc call. `errno` is null when it is unknown (a call on a worker thread). */
export class LibcError extends Error {
  readonly code = "LIBC";
  readonly errnoName: string;
  constructor(readonly call: string, readonly errno: number | null) {
    const name = errno === null ? "errno unknown" : errnoName(errno);
    super(`${call} failed: ${name}`);
    this.name = "LibcError";
    this.errnoName = name;
  }
}

const SYMBOLS = {
  open: { parameters: ["buffer", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  // ioctl is variadic; every NBD ioctl takes one integer argument, passed as
  // an unsigned long like the kernel reads it.
  ioctl: { parameters: ["i32", "u64", "u64"], result: "i32" },
  ioctl_blocking: {
    name: "ioctl",
    parameters: ["i32", "u64", "u64"],
    result: "i32",
    nonblocking: true,
  },
  recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  send: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32", nonblocking: true },
  __errno_location: { parameters: [], result: "pointer" },
  // ffi/netlink.ts: bind(2) of a netlink socket; send(2) of a generic-netlink
  // command on a worker thread (see there why).
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  send_blocking: {
    name: "send",
    parameters: ["i32", "buffer", "usize", "i32"],
    result: "isize",
    nonblocking: true,
  },
  // ffi/rlimit.ts.
  getrlimit: { parameters: ["i32", "buffer"], result: "i32" },
  setrlimit: { parameters: ["i32", "buffer"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

/** The libc symbols, for the other ffi/ modules. */
export type Libc = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];
let handle: Libc | null = null;

/** The process's one libc handle, opened on first use. */
export function libc(): Libc {
  handle ??= Deno.dlopen("libc.so.6", SYMBOLS).symbols;
  return handle;
}

const lib = libc;

/** errno of the last failed call on this thread (every libc handle shares it). */
export function errno(): number {
  const at = lib().__errno_location();
  return at === null ? 0 : new Deno.UnsafePointerView(at).getInt32();
}

function check(result: number, call: string): number {
  if (result < 0) throw new LibcError(call, errno());
  return result;
}

function ioctlName(request: number): string {
  return IOCTL_NAMES.get(request) ?? `0x${request.toString(16)}`;
}

const encoder = new TextEncoder();

/** open(2); returns the fd. */
export function open(path: string, flags: number): number {
  return check(lib().open(encoder.encode(path + "\0"), flags), `open(${path})`);
}

export function close(fd: number): void {
  check(lib().close(fd), `close(${fd})`);
}

/** socket(2); returns the fd. */
export function socket(domain: number, type: number, protocol = 0): number {
  return check(lib().socket(domain, type, protocol), "socket");
}

/** Longest path a sockaddr_un holds, less its terminating NUL. */
const UNIX_PATH_MAX = 107;

/**
 * connect(2) of a unix socket to `path`; a leading "@" names an address in the
 * abstract namespace (as systemd's $NOTIFY_SOCKET may). A stream socket
 * returns once the listener has queued the connection, before it is accepted.
 */
export function connectUnix(fd: number, path: string): void {
  const abstract = path.startsWith("@");
  const bytes = encoder.encode(abstract ? "\0" + path.slice(1) : path);
  if (bytes.length > UNIX_PATH_MAX) {
    throw new RangeError(`unix socket path of ${bytes.length} bytes is too long: ${path}`);
  }
  // struct sockaddr_un { sa_family_t sun_family; char sun_path[108]; }
  const address = new Uint8Array(2 + UNIX_PATH_MAX + 1);
  new DataView(address.buffer).setUint16(0, AF_UNIX, true);
  address.set(bytes, 2);
  // An abstract name is exactly its bytes: trailing NULs would be part of it.
  const length = abstract ? 2 + bytes.length : address.length;
  check(lib().connect(fd, address, length), `connect(${fd}, ${path})`);
}

/** setsockopt(2) with an int value. */
export function setsockoptInt(fd: number, level: number, option: number, value: number): void {
  const bytes = new Int32Array([value]);
  check(lib().setsockopt(fd, level, option, bytes, 4), `setsockopt(${fd}, ${option})`);
}

/** ioctl(2) with one integer argument, on the calling thread. */
export function ioctl(fd: number, request: number, arg: number | bigint = 0): number {
  return check(lib().ioctl(fd, BigInt(request), BigInt(arg)), `ioctl(${ioctlName(request)})`);
}

/**
 * ioctl(2) on a worker thread, for calls that block (NBD_DO_IT). Resolves with
 * the raw result: a negative result is not thrown, because its errno is lost
 * with the worker thread and the caller decides what the return means.
 */
export async function ioctlOnWorker(
  fd: number,
  request: number,
  arg: number | bigint = 0,
): Promise<number> {
  return await lib().ioctl_blocking(fd, BigInt(request), BigInt(arg));
}

/** recv(2) without blocking: bytes read (0 = EOF), or null when nothing is ready. */
export function recvNow(fd: number, target: Uint8Array): number | null {
  for (;;) {
    const n = Number(lib().recv(fd, target, BigInt(target.length), MSG_DONTWAIT));
    if (n >= 0) return n;
    const code = errno();
    if (code === EAGAIN) return null;
    if (code !== EINTR) throw new LibcError(`recv(${fd})`, code);
  }
}

/** send(2) without blocking or SIGPIPE: bytes written, or null when the socket buffer is full. */
export function sendNow(fd: number, data: Uint8Array): number | null {
  for (;;) {
    const n = Number(lib().send(fd, data, BigInt(data.length), MSG_DONTWAIT | MSG_NOSIGNAL));
    if (n >= 0) return n;
    const code = errno();
    if (code === EAGAIN) return null;
    if (code !== EINTR) throw new LibcError(`send(${fd})`, code);
  }
}

/**
 * poll(2) on one fd on a worker thread, without timeout: resolves with the
 * returned events (POLLHUP / POLLERR included), or 0 if the wait was
 * interrupted. shutdown(2) of the socket ends the wait.
 */
export async function pollOnWorker(fd: number, events: number): Promise<number> {
  const pollfd = new Uint8Array(8); // struct pollfd { int fd; short events; short revents; }
  const dv = new DataView(pollfd.buffer);
  dv.setInt32(0, fd, true);
  dv.setInt16(4, events, true);
  const n = await lib().poll(pollfd, 1n, -1);
  return n > 0 ? dv.getUint16(6, true) : 0;
}
