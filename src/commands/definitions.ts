/**
 * The command lines of the subcommands that are not client commands (those
 * are src/cli/command_table.ts): serve, demo, client, csi, ivbs-server,
 * attach and export, with the flags several of them share declared once. This
 * module is light on purpose: `ivbsnetd --help` and `ivbsnetd X --help` read
 * it without loading a command's code (the daemon, gRPC, FFI).
 * @module
 */
import { parseHostPort, UsageError } from "../args.ts";
import { defineCommand, type FlagSpecs, type FlagValuesOf } from "../command_line.ts";
import { DEFAULT_SERVER } from "../cli/api_client.ts";
import { READ_ONLY_FLAG } from "../cli/command_table.ts";
import { HELP as NETDCLIENT_HELP } from "../cli/netdclient.ts";
import { DEFAULT_PORT } from "../ivbs/wire.ts";

/** How to reach a running daemon: the client commands, client and csi. */
export const SERVER_FLAGS = {
  server: {
    type: "string",
    value: "URL",
    help: `daemon address (default $IVBSNETD_SERVER or ${DEFAULT_SERVER})`,
  },
  token: { type: "string", value: "TOKEN", help: "bearer token (default $IVBSNETD_TOKEN)" },
} as const satisfies FlagSpecs;

/** The HTTP API's address: serve and demo. */
const LISTEN_FLAG = {
  listen: {
    type: "string",
    value: "HOST:PORT",
    help: "HTTP API and status page address (default 127.0.0.1:8080, or\n" +
      "the config's http.listen; port 0 = any free port)",
  },
} as const satisfies FlagSpecs;

const SOURCE = "SOURCE, one of";

/** How the foreground commands (attach, export) log in to an IVBS image given by --image. */
const IVBS_LOGIN_FLAGS = {
  user: { type: "string", value: "U", help: "IVBS username (with --image)", group: SOURCE },
  "password-file": {
    type: "string",
    value: "F",
    help: "file holding the password (trailing newline ignored)",
    group: SOURCE,
  },
  proxy: {
    type: "string",
    value: "HOST:PORT",
    multiple: true,
    help: "an IVBS proxy; repeat for the fallback list",
    group: SOURCE,
  },
} as const satisfies FlagSpecs;

/** The IVBS login those flags give; a UsageError names the one missing. */
export function ivbsLogin(values: FlagValuesOf<typeof IVBS_LOGIN_FLAGS>): {
  username: string;
  passwordFile: string;
  proxies: { host: string; port: number }[];
} {
  if (!values.user) throw new UsageError("--image needs --user");
  if (!values["password-file"]) throw new UsageError("--image needs --password-file");
  const proxies = (values.proxy ?? []).map((text) => parseHostPort(text, "--proxy"));
  if (proxies.length === 0) throw new UsageError("--image needs at least one --proxy HOST:PORT");
  return { username: values.user, passwordFile: values["password-file"], proxies };
}

export const SERVE = defineCommand({
  name: "serve",
  summary: "run the daemon: HTTP API and status page, mounts from --config FILE",
  usage: "",
  forms: ["[--config FILE] [--listen HOST:PORT] [--replace]"],
  description: [
    "Runs the daemon: the HTTP API and status page, and the mounts and NBD exports",
    "FILE lists (exports listen on exports.listen.socket, default <stateDir>/nbd.sock).",
    "Stops on SIGINT or `ivbsnetd shutdown` (POST /api/shutdown), detaching every",
    "device and closing every export first. SIGTERM (and `ivbsnetd shutdown",
    "--keep-devices`) instead leaves netlink-attached devices to the next daemon:",
    "their I/O waits (up to nbd.deadConnTimeoutS) until a daemon started on the same",
    "stateDir takes them over.",
  ].join("\n"),
  flags: {
    config: {
      type: "string",
      short: "c",
      value: "FILE",
      help: "JSON config (current or 2013 format; see config.example.json).\n" +
        "Without it: no mounts, HTTP on 127.0.0.1:8080, proxy 127.0.0.1:11417",
    },
    ...LISTEN_FLAG,
    replace: {
      type: "boolean",
      help: "upgrade in place: log in for every device the daemon recorded in\n" +
        "stateDir serves, then stop it (SIGTERM: it leaves its devices) and\n" +
        "hand the kernel the new sockets; the pause is the hand-over only",
    },
  },
  args: [0, 0],
  notes: [
    "On start it prints `ivbsnetd: listening on http://HOST:PORT` on stdout.",
    "exit codes: 0 stopped cleanly, 1 could not start (e.g. port in use) or stopped on an",
    "uncaught error (after the usual shutdown), 2 bad config or usage",
  ].join("\n"),
});

export const DEMO = defineCommand({
  name: "demo",
  summary: "try it all on this machine: IVBS test server + daemon (+ a mount where possible)",
  usage: "",
  forms: ["[--listen HOST:PORT] [--size-gib N] [--socket PATH]"],
  description: [
    "Starts an IVBS test server (image demo, user demo, password demo), the daemon",
    "and its status page, serves the image as NBD export demo (for qemu-img, qemu-io,",
    "nbdinfo, fio) and mounts it too when this machine can (nbd module + root).",
    "Ctrl-C or SIGTERM detaches the device, stops the test server and exits.",
  ].join("\n"),
  flags: {
    ...LISTEN_FLAG,
    "size-gib": {
      type: "string",
      value: "N",
      help: "size of the demo image in GiB (default 1; memory, sparse)",
    },
    socket: {
      type: "string",
      value: "PATH",
      help: "NBD export socket (default: nbd.sock in a new temp directory)",
    },
  },
  args: [0, 0],
});

export const CLIENT = defineCommand({
  name: "client",
  summary: "netdclient: interactive client of a running daemon",
  usage: "",
  description: [
    "Interactive netdclient: type commands at the prompt (help lists them). Line",
    "editing and history (up/down); Ctrl-C cancels the line, twice on an empty line",
    "(or Ctrl-D) leaves.",
  ].join("\n"),
  flags: SERVER_FLAGS,
  args: [0, 0],
  notes: NETDCLIENT_HELP,
});

export const CSI = defineCommand({
  name: "csi",
  summary: "Kubernetes CSI plugin (node, or --controller) in front of a running daemon",
  usage: "",
  forms: [
    "--endpoint unix:///PATH --node-id NAME [options]",
    "--endpoint unix:///PATH --controller [options]",
  ],
  description: [
    "Serves the Container Storage Interface (spec v1.12) on a unix socket for",
    "Kubernetes. Volumes are existing IVBS images (volume id = image name), with",
    "the IVBS username and password from the PV's secrets. Every device and IVBS",
    "action goes through the daemon's HTTP API (--server).",
  ].join("\n"),
  flags: {
    endpoint: {
      type: "string",
      value: "unix:///P",
      help: "the socket to serve (kubelet's plugin directory)",
    },
    "node-id": {
      type: "string",
      value: "NAME",
      help: "this node's name (node mode; usually the Kubernetes node name)",
    },
    controller: {
      type: "boolean",
      help: "serve Identity + Controller instead of Node: record which\n" +
        "node has a volume and refuse a second one for a single-node\n" +
        "volume (runs beside the external-attacher)",
    },
    "state-dir": {
      type: "string",
      value: "DIR",
      help: "where the controller keeps its record (default\n/var/lib/ivbsnetd-csi)",
    },
    server: SERVER_FLAGS.server,
    "token-file": { type: "string", value: "F", help: "file holding the API's bearer token" },
  },
  args: [0, 0],
  notes: "exit codes: 0 stopped cleanly (SIGINT or SIGTERM), 1 could not serve the\n" +
    "endpoint, 2 usage error or unreadable --token-file",
});

export const IVBS_SERVER = defineCommand({
  name: "ivbs-server",
  summary: "run the IVBS test server (several proxies over one image store)",
  usage: "",
  description: [
    "Runs an IVBS test server: one or more proxies (TCP listeners) over one shared",
    "image store, until SIGINT or SIGTERM. Good enough to run the daemon against.",
  ].join("\n"),
  flags: {
    host: {
      type: "string",
      value: "HOST",
      help: "listen address of every proxy (default 127.0.0.1)",
    },
    port: {
      type: "string",
      value: "PORT",
      multiple: true,
      help: "a proxy on PORT; repeat for more proxies\n" +
        `(default: one proxy on ${DEFAULT_PORT}; 0 = any free port)`,
    },
    proxies: {
      type: "string",
      value: "N",
      help: `N proxies on consecutive ports from the first --port\n(or ${DEFAULT_PORT}) upward`,
    },
    "data-dir": {
      type: "string",
      value: "DIR",
      help: "keep images as DIR/NAME.img files (sparse); existing ones\n" +
        "are served too. Default: in memory, lost at exit",
    },
    create: {
      type: "string",
      value: "NAME:SIZE[:ro]",
      multiple: true,
      help: "create image NAME of SIZE bytes if missing (suffix K, M,\n" +
        'G or T for KiB..TiB; ":ro" = read-only); repeatable',
    },
    user: {
      type: "string",
      value: "NAME:PASS",
      multiple: true,
      help: "allow user NAME with password PASS; repeatable",
    },
    "users-file": {
      type: "string",
      value: "FILE",
      help: 'JSON list of users: [{"username": "...", "password": "..."}]',
    },
    "idle-timeout": {
      type: "string",
      value: "SECONDS",
      help: "close connections that send nothing this long (default 30)",
    },
    "list-interval": {
      type: "string",
      value: "SECONDS",
      help: "push LIST_PROXIES this often; 0 = never (default 5)",
    },
    "reply-delay": {
      type: "string",
      value: "MIN-MAX",
      help: "delay every reply by a random MIN..MAX ms, so pipelined\n" +
        "replies come back out of order (default: none)",
    },
    "admin-port": {
      type: "string",
      value: "PORT",
      help: "serve the admin JSON API on 127.0.0.1:PORT\n" +
        "(GET /proxies, POST /proxies/N/stop|start|stall|unstall|\n" +
        'hold|release|drop, POST /inject {"status":"TEMPORARY_ERROR",\n' +
        '"count":3}, GET /stats). stall: a proxy that reads and\n' +
        "answers nothing (hung); hold: READ/WRITE replies held\n" +
        "back but KEEPALIVE answered (alive, storage stuck)",
    },
  },
  args: [0, 0],
  notes: [
    "example:",
    "  ivbsnetd ivbs-server --proxies 2 --user alice:secret --create disk0:1G \\",
    "    --create golden:64M:ro --data-dir /var/tmp/ivbs --admin-port 11500",
    "",
    "exit codes: 0 stopped cleanly (SIGINT or SIGTERM), 2 usage error or could not start",
  ].join("\n"),
});

export const ATTACH = defineCommand({
  name: "attach",
  summary: "attach one image (or a memory disk) to /dev/nbdX in the foreground, for tests",
  usage: "",
  forms: ["--device /dev/nbdN SOURCE [options]"],
  description: [
    "Attaches SOURCE to the kernel NBD device and serves it until SIGINT or",
    "SIGTERM, then detaches (NBD_DISCONNECT, answer what is in flight, close) and",
    "exits 0. Needs root and the nbd module (modprobe nbd).",
  ].join("\n"),
  flags: {
    memory: {
      type: "string",
      value: "SIZE",
      help: "a memory disk of SIZE bytes (K/M/G/T suffix), lost at exit",
      group: SOURCE,
    },
    image: { type: "string", value: "IMG", help: "an IVBS image", group: SOURCE },
    ...IVBS_LOGIN_FLAGS,
    device: { type: "string", value: "/dev/nbdN", help: "the NBD device (required)" },
    ...READ_ONLY_FLAG,
    "block-size": {
      type: "string",
      value: "N",
      help: "logical block size, 512..4096 (default 4096)",
    },
    timeout: {
      type: "string",
      value: "S",
      help: "kernel request timeout in seconds (default 0 = none;\n" +
        "the IVBS layer has its own I/O timeout)",
    },
    "max-in-flight": {
      type: "string",
      value: "N",
      help: "requests in flight to the backend (default 128)",
    },
    "max-request-kb": {
      type: "string",
      value: "N",
      help: "largest request the kernel sends, KiB (default 1024)",
    },
  },
  args: [0, 0],
  notes: 'Prints "attached DEVICE SIZE" on stdout once the device is live.\n' +
    "exit codes: 0 detached on SIGINT or SIGTERM, 1 could not attach or the device\n" +
    "was disconnected from outside, 2 usage error",
});

export const EXPORT = defineCommand({
  name: "export",
  summary: "serve IVBS images (or memory disks) as NBD exports in the foreground, without a daemon",
  usage: "",
  forms: ["--socket PATH [--tcp 127.0.0.1:PORT] [options] SOURCE"],
  description: [
    "Serves NBD exports until SIGINT or SIGTERM. Clients connect with URIs like",
    "nbd+unix:///NAME?socket=PATH or nbd://127.0.0.1:PORT/NAME. Each client of an",
    "IVBS export gets its own IVBS session, so proxy failover is per client.",
    "This runs without a daemon; to add exports to a running daemon (ivbsnetd",
    "serve) use ivbsnetd export-add, export-remove and export-list instead.",
  ].join("\n"),
  flags: {
    socket: {
      type: "string",
      value: "PATH",
      help: "unix socket (mode 0600; a stale one is replaced)",
      group: "listeners",
    },
    tcp: {
      type: "string",
      value: "HOST:PORT",
      help: "also listen on TCP; loopback only (NBD has no auth here)",
      group: "listeners",
    },
    memory: {
      type: "string",
      value: "SIZE",
      help: "one memory disk per --name (SIZE with K/M/G/T suffix),\n" +
        "shared by that export's clients, lost at exit",
      group: SOURCE,
    },
    image: {
      type: "string",
      value: "IMG",
      multiple: true,
      help: "an IVBS image; repeat for several exports",
      group: SOURCE,
    },
    ...IVBS_LOGIN_FLAGS,
    name: {
      type: "string",
      value: "NAME",
      multiple: true,
      help: "export name; repeat for several (with --image, pairs\n" +
        "with the --image at the same position; default: the\nimage names)",
    },
    ...READ_ONLY_FLAG,
    "max-clients": {
      type: "string",
      value: "N",
      help: "clients at once, all exports together (default 64)",
    },
    "handshake-timeout": {
      type: "string",
      value: "S",
      help: "seconds a client may take to negotiate (default 10)",
    },
  },
  args: [0, 0],
  notes: [
    "example:",
    "  ivbsnetd export --socket /run/ivbsnetd/nbd.sock --image disk0 --user alice \\",
    "    --password-file /etc/ivbsnetd/alice.pass --proxy 127.0.0.1:11417 --proxy 127.0.0.1:11418",
    "  qemu-img info 'nbd+unix:///disk0?socket=/run/ivbsnetd/nbd.sock'",
    "",
    "exit codes: 0 stopped cleanly (SIGINT or SIGTERM), 1 could not start (login,",
    "socket), 2 usage error",
  ].join("\n"),
});
