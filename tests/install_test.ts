/**
 * `deno task install` (tools/install.sh) into a temporary PREFIX or DESTDIR:
 * the launcher runs the bundle, a daemon started through it passes the pid
 * check, and the installed unit names the launcher and the README it installed
 * (and passes `systemd-analyze verify` without a stand-in program).
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { hasTool, runTool } from "./support/tools.ts";
import { isDaemonProcess } from "../src/daemon/daemon_process.ts";
import { DaemonProcess } from "../bench/rigs/daemon_harness.ts";
import { V8_FLAGS_ARG } from "../src/runtime_flags.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

async function install(env: Record<string, string>): Promise<void> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["task", "install"],
    cwd: ROOT,
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, text);
}

Deno.test("install into a PREFIX: the launcher runs the bundle, and its daemon passes the pid check", async () => {
  const prefix = await Deno.makeTempDir({ prefix: "ivbsnetd-install-" });
  try {
    await install({ PREFIX: prefix });
    const launcher = `${prefix}/bin/ivbsnetd`;
    assert.equal((await Deno.stat(launcher)).mode! & 0o777, 0o755);
    const help = await runTool(launcher, ["--help"]);
    assert.equal(help.code, 0, help.stderr);
    assert.match(help.stdout, /usage: ivbsnetd <command>/);

    const serveHelp = await runTool(launcher, ["serve", "--help"]);
    assert.match(serveHelp.stdout, /usage: ivbsnetd serve/);

    const config = `${prefix}/ivbsnetd.json`;
    await Deno.writeTextFile(
      config,
      JSON.stringify({ http: { listen: "127.0.0.1:0" }, stateDir: `${prefix}/state` }),
      { mode: 0o600 },
    );
    // `serve` as systemd would run it; exec kept the launcher's pid, so the
    // unit's main process is the daemon, and it passes the pid check.
    const daemon = await DaemonProcess.start(config, { program: [launcher] });
    assert.equal(await isDaemonProcess(daemon.pid), true);
    const argv = (await Deno.readTextFile(`/proc/${daemon.pid}/cmdline`)).split("\0");
    assert.ok(argv.includes(V8_FLAGS_ARG), `the daemon runs without ${V8_FLAGS_ARG}: ${argv}`);
    assert.equal((await daemon.stop("SIGTERM")).code, 0);

    const unit = await Deno.readTextFile(`${prefix}/lib/systemd/system/ivbsnetd.service`);
    assert.match(
      unit,
      new RegExp(`^ExecStart=${launcher} serve --config /etc/ivbsnetd.json$`, "m"),
    );
    const doc = `${prefix}/share/doc/ivbsnetd/README.md`;
    assert.match(unit, new RegExp(`^Documentation=file://${doc}$`, "m"));
    await Deno.stat(doc);
    await Deno.stat(`${prefix}/share/doc/ivbsnetd/config.example.json`);
    if (await hasTool("systemd-analyze")) {
      const verify = await runTool("systemd-analyze", [
        "verify",
        `${prefix}/lib/systemd/system/ivbsnetd.service`,
      ]);
      assert.equal(verify.code, 0, verify.stderr);
      assert.equal(verify.stderr.trim(), "");
    }
  } finally {
    await Deno.remove(prefix, { recursive: true });
  }
});

Deno.test("install with DESTDIR stages the files but names the final paths in them", async () => {
  const destdir = await Deno.makeTempDir({ prefix: "ivbsnetd-destdir-" });
  try {
    await install({ DESTDIR: destdir, PREFIX: "/usr/local" });
    const launcher = await Deno.readTextFile(`${destdir}/usr/local/bin/ivbsnetd`);
    assert.match(launcher, /^exec "\/\S+" run --allow-all --no-config/m);
    assert.ok(launcher.includes(`"/usr/local/lib/ivbsnetd/ivbsnetd.js" "$@"`), launcher);
    assert.ok(!launcher.includes(destdir), "no staging path in the launcher");
    await Deno.stat(`${destdir}/usr/local/lib/ivbsnetd/ivbsnetd.js`);
    const unit = await Deno.readTextFile(
      `${destdir}/usr/local/lib/systemd/system/ivbsnetd.service`,
    );
    const shipped = await Deno.readTextFile(`${ROOT}/systemd/ivbsnetd.service`);
    assert.equal(unit, shipped, "at the default PREFIX the unit is installed as shipped");
  } finally {
    await Deno.remove(destdir, { recursive: true });
  }
});

Deno.test("install refuses a relative PREFIX", async () => {
  const out = await new Deno.Command("bash", {
    args: [`${ROOT}/tools/install.sh`],
    env: { PREFIX: "usr/local" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 2);
  assert.match(new TextDecoder().decode(out.stderr), /PREFIX must be an absolute path/);
});
