// Web Push sending benchmark: npm web-push and tidings against the same local push service
// (examples/push_service.rs: TLS, VAPID verified, every payload decrypted), same machine, same
// run, alternating. Sends per second and per CPU-second of the *sending* process.
//
//   cargo build --release --example push_service --example webpush_bench
//   cd bench/peers && npm install && node webpush.mjs [messages] [subscriptions] [concurrency]
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir, cpus } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../..");
const [messages = "20000", subscriptions = "100", concurrency = "64"] = process.argv.slice(2);
const certDir = mkdtempSync(path.join(tmpdir(), "tidings-push-bench-"));
process.on("exit", () => rmSync(certDir, { recursive: true, force: true }));
const cert = path.join(certDir, "ca.pem");

const service = spawn(path.join(root, "target/release/examples/push_service"), ["--record", "false", "--cert", cert], {
  stdio: ["ignore", "pipe", "inherit"],
});
const control = await new Promise((resolve) => {
  let out = "";
  service.stdout.on("data", (c) => {
    out += c;
    const m = out.match(/control (http:\/\/\S+)/);
    if (m) resolve(m[1]);
  });
});

function run(cmd, args, env = {}) {
  const out = execFileSync(cmd, args, { env: { ...process.env, ...env }, encoding: "utf8", maxBuffer: 1 << 24 });
  return JSON.parse(out.trim().split("\n").pop());
}
const npm = () => run("node", [path.join(here, "webpush-send.mjs"), control, subscriptions, messages, concurrency], { NODE_EXTRA_CA_CERTS: cert });
const tidings = (mode, runtime = "multi") => run(path.join(root, "target/release/examples/webpush_bench"),
  ["--control", control, "--cert", cert, "--mode", mode, "--runtime", runtime, "--subscriptions", subscriptions, "--messages", messages, "--concurrency", concurrency]);

const rows = [];
for (let round = 1; round <= 2; round++) {
  for (const r of [npm(), tidings("sender"), tidings("sender", "current"), tidings("dispatch")]) rows.push({ round, ...r });
}
service.kill("SIGKILL");

console.log(`\n${messages} messages of 256 B, ${subscriptions} subscribers, ${concurrency} in flight; ${cpus().length} cores (${cpus()[0].model}); node ${process.version}\n`);
console.log("| round | sender | delivered | seconds | sends/s | CPU s | sends per CPU-s |");
console.log("|---|---|---|---|---|---|---|");
for (const r of rows) {
  console.log(`| ${r.round} | ${r.sender} | ${r.delivered} | ${r.seconds.toFixed(2)} | ${Math.round(r.per_second)} | ${r.cpu_seconds.toFixed(2)} | ${Math.round(r.per_cpu_second)} |`);
}
const best = (name) => Math.max(...rows.filter((r) => r.sender.startsWith(name)).map((r) => r.per_cpu_second));
const npmBest = best("npm");
console.log(`\nsends per CPU-second against npm web-push's best round: ${rows.filter((r) => r.sender.startsWith("tidings")).map((r) => `${r.sender} ${(r.per_cpu_second / npmBest).toFixed(1)}x`).join("; ")}`);
