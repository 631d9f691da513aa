// npm web-push's side of the Web Push benchmark (run by webpush.mjs, with NODE_EXTRA_CA_CERTS
// set to the local push service's certificate): sendNotification, `concurrency` at once over
// one keep-alive agent, round-robin over the subscribers; prints one JSON line.
import https from "node:https";
import webpush from "web-push";

const [control, subscriptions, messages, concurrency] = process.argv.slice(2);
const subs = [];
for (let i = 0; i < Number(subscriptions); i++) {
  subs.push((await (await fetch(control + "/subscriptions", { method: "POST" })).json()).subscription);
}
const keys = webpush.generateVAPIDKeys();
webpush.setVapidDetails("mailto:bench@example.com", keys.publicKey, keys.privateKey);
const agent = new https.Agent({ keepAlive: true, maxSockets: Number(concurrency) });
const payload = JSON.stringify({ id: "AQ", topic: "bench", event: null, data: "x".repeat(200) });

const cpu0 = process.cpuUsage();
const t0 = process.hrtime.bigint();
let next = 0;
let delivered = 0;
async function worker() {
  for (;;) {
    const i = next++;
    if (i >= Number(messages)) return;
    try {
      const r = await webpush.sendNotification(subs[i % subs.length], payload, { TTL: 60, agent });
      if (r.statusCode === 201) delivered++;
    } catch (e) {
      console.error(String(e).slice(0, 200));
    }
  }
}
await Promise.all(Array.from({ length: Number(concurrency) }, worker));
const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
const cpu = process.cpuUsage(cpu0);
const cpuSeconds = (cpu.user + cpu.system) / 1e6;
console.log(JSON.stringify({
  sender: "npm web-push " + JSON.parse((await import("node:fs")).readFileSync(new URL("./node_modules/web-push/package.json", import.meta.url))).version,
  delivered, seconds, cpu_seconds: cpuSeconds, per_second: delivered / seconds, per_cpu_second: delivered / cpuSeconds,
}));
agent.destroy();
