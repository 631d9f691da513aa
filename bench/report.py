#!/usr/bin/env python3
"""Turns bench/run's results (one JSON line per measurement) into the generated part of
docs/benchmarks.md and two SVG plots in docs/bench/. Standard library only.

    report.py RESULTS --write DOCS_DIR [--seconds N]   # rewrite the generated block
    report.py RESULTS --check                          # exit 1 if anything was lost
"""
import json
import os
import platform
import statistics
import subprocess
import sys
from collections import defaultdict
from datetime import date
from pathlib import Path

BEGIN = "<!-- bench/run: generated, do not edit by hand -->"
END = "<!-- bench/run: end -->"
NAMES = {
    "tidings": "tidings `sse_demo --store memory`",
    "handwritten": "axum `Sse` + broadcast, by hand",
    "shared": "the same, frames shared as `Bytes`",
    "nchan": "Nchan (nginx, 2 workers)",
}
ORDER = ["tidings", "handwritten", "shared", "nchan"]
COLORS = {"tidings": "#d62728", "handwritten": "#1f77b4", "shared": "#2ca02c", "nchan": "#9467bd"}


def server_of(r):
    # bench/run names the server (`shared` runs with the load generator's `--kind handwritten`).
    return r.get("server") or r["kind"]


def load(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip().startswith("{")]


def lost(r):
    return r.get("missing", 0) + r.get("repeated", 0) + r.get("out_of_order", 0)


def fmt(x, digits=0):
    if x is None:
        return "-"
    return f"{x:,.{digits}f}".replace(",", " ")


def rng(values, digits=0, scale=1.0):
    values = [v * scale for v in values]
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return fmt(lo, digits) if fmt(lo, digits) == fmt(hi, digits) else f"{fmt(lo, digits)} – {fmt(hi, digits)}"


def svg_lines(title, xlabel, ylabel, series, path):
    """A line chart: series = {name: [(x, y), ...]}."""
    w, h, left, right, top, bottom = 640, 360, 80, 200, 40, 50
    xs = sorted({x for pts in series.values() for x, _ in pts})
    ymax = max((y for pts in series.values() for _, y in pts), default=1) * 1.1 or 1
    def px(x):
        return left + (xs.index(x) / max(len(xs) - 1, 1)) * (w - left - right)
    def py(y):
        return h - bottom - y / ymax * (h - top - bottom)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{left}" y="22" font-size="14" font-weight="bold">{title}</text>']
    for i in range(6):
        y = ymax * i / 5
        out.append(f'<line x1="{left}" x2="{w - right}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{fmt(y)}</text>')
    for x in xs:
        out.append(f'<text x="{px(x):.1f}" y="{h - bottom + 18}" text-anchor="middle">{fmt(x)}</text>')
    out.append(f'<text x="{(left + w - right) / 2}" y="{h - 12}" text-anchor="middle">{xlabel}</text>')
    out.append(f'<text x="16" y="{(top + h - bottom) / 2}" transform="rotate(-90 16 {(top + h - bottom) / 2})" text-anchor="middle">{ylabel}</text>')
    for i, (name, pts) in enumerate(series.items()):
        pts = sorted(pts)
        color = COLORS.get(name, "#333")
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{" ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)}"/>')
        for x, y in pts:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}"/>')
        ly = top + 10 + i * 20
        out.append(f'<line x1="{w - right + 15}" x2="{w - right + 35}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2"/>')
        out.append(f'<text x="{w - right + 40}" y="{ly + 4}">{name}</text>')
    out.append("</svg>")
    Path(path).write_text("\n".join(out) + "\n")


def cmd(args):
    """What a command prints (stdout, else stderr: `nginx -v` writes there), or "?"."""
    try:
        done = subprocess.run(args, capture_output=True, text=True, check=False)
    except OSError:
        return "?"
    return done.stdout.strip() or done.stderr.strip()


def machine():
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().split()[1]
    return (f"{os.cpu_count()} cores ({model}), {int(mem) // 1024 // 1024} GiB, Linux {platform.release()}; "
            f"{cmd(['rustc', '--version'])}; {cmd(['nginx', '-v'])}, libnginx-mod-nchan "
            f"{cmd(['dpkg-query', '-W', '-f=${Version}', 'libnginx-mod-nchan'])}")


def report(rows, seconds):
    pinned = [r for r in rows if r["mode"] == "fanout" and str(r.get("label", "")).startswith("pinned")]
    proto = [r for r in rows if r["mode"] == "fanout" and str(r.get("label", "")).startswith("protocol")]
    ws = [r for r in rows if r["mode"] == "fanout" and r.get("websocket")]
    hub = [r for r in rows if r["mode"] == "fanout" and r["kind"] == "tidings-hub"]
    fan = [r for r in rows if r["mode"] == "fanout" and r.get("rate", 0) == 0 and r not in pinned and r not in proto and r not in ws and r not in hub]
    lat = [r for r in rows if r["mode"] == "fanout" and r.get("rate", 0) > 0]
    lp = [r for r in rows if r["mode"] == "longpoll"]
    rep = [r for r in rows if r["mode"] == "replay"]
    counts = sorted({r["subscribers"] for r in fan})
    by = defaultdict(list)
    for r in fan:
        by[(server_of(r), r["subscribers"])].append(r)
    md = [BEGIN, "", f"Generated by `bench/run` on {date.today()} in {seconds} s. Machine: {machine()}.", "",
          "Every server is started fresh for each measurement; the load generator "
          "(`bench/src/bin/loadgen.rs`) runs in its own process on the same two cores, and CPU and "
          "resident memory are the server's own (`/proc/PID/stat` and `status`, nginx's workers "
          "included). Fan-out: N SSE subscribers on one topic, then 300 events of 256 B published "
          "one after another as fast as one publisher goes (`POST`, each answer awaited); the CPU "
          "window runs from the first publish until every subscriber has every event. Memory per "
          "connection: (RSS with N idle subscriptions − RSS before) / N.", "",
          "```sh", "bench/run            # everything, then rewrites this block and docs/bench/*.svg", "```", ""]
    total_lost = sum(lost(r) for r in rows)
    md += [f"**Lost, repeated or reordered deliveries in the whole run: {total_lost}.**", ""]

    md += ["### Fan-out: deliveries per server CPU-second", "",
           "| subscribers | " + " | ".join(NAMES[s] for s in ORDER) + " |",
           "|---|" + "---|" * len(ORDER)]
    for n in counts:
        md.append(f"| {fmt(n)} | " + " | ".join(rng([r["deliveries_per_cpu_second"] for r in by[(s, n)]]) for s in ORDER) + " |")
    md += ["", "![deliveries per CPU-second](bench/fanout.svg)", ""]

    def ratio(a, b, n):
        # Same-round ratios: round k of a against round k of b.
        ra = {r["label"]: r["deliveries_per_cpu_second"] for r in by[(a, n)]}
        rb = {r["label"]: r["deliveries_per_cpu_second"] for r in by[(b, n)]}
        return [ra[k] / rb[k] for k in ra if k in rb and rb[k] > 0]

    md += ["Ratios of tidings' deliveries per CPU-second to each baseline, round by round:", "",
           "| subscribers | vs by hand | vs shared bytes | vs Nchan |", "|---|---|---|---|"]
    for n in counts:
        md.append(f"| {fmt(n)} | " + " | ".join(rng(ratio("tidings", b, n), 2) + "x" for b in ["handwritten", "shared", "nchan"]) + " |")
    md += [""]

    if pinned:
        pn = pinned[0]["subscribers"]
        pby = defaultdict(dict)
        for r in pinned:
            pby[server_of(r)][r["label"]] = r
        rounds = sorted({r["label"] for r in pinned})
        md += [f"### Fan-out at {fmt(pn)} subscribers, each process on its own core", "",
               "The same measurement with the server held to CPU 0 and the load generator to CPU 1 "
               "(`taskset`; nginx's workers inherit it), so that neither process takes the other's "
               "core (above, the two processes share both cores, and the one publisher waits for "
               "whichever process the scheduler runs). Publish: the median round trip of a `POST` as "
               "the publisher sees it.", "",
               "| round | " + " | ".join(NAMES[s] for s in ORDER) + " | tidings / by hand | tidings / shared bytes | tidings / Nchan |",
               "|---|" + "---|" * (len(ORDER) + 3)]
        for k in rounds:
            cells = []
            for s in ORDER:
                r = pby[s].get(k)
                cells.append("–" if r is None else f"{fmt(r['deliveries_per_cpu_second'])} (publish p50 "
                             f"{fmt(r.get('publish_ms', {}).get('p50', 0), 1)} ms)")
            t = pby["tidings"].get(k)
            ratios = []
            for b in ["handwritten", "shared", "nchan"]:
                rb = pby[b].get(k)
                ratios.append("–" if not t or not rb else f"{t['deliveries_per_cpu_second'] / rb['deliveries_per_cpu_second']:.2f}x")
            md.append(f"| {k.removeprefix('pinned ')} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
        md += [""]

    md += ["### Fan-out: memory, throughput and latency", "",
           "| server | subscribers | KiB per idle connection | deliveries / s | p50 ms | p99 ms | lost |",
           "|---|---|---|---|---|---|---|"]
    for n in counts:
        for s in ORDER:
            rs = by[(s, n)]
            if rs:
                md.append(f"| {NAMES[s]} | {fmt(n)} | {rng([r['kib_per_connection'] for r in rs], 1)} | "
                          f"{rng([r['deliveries_per_second'] for r in rs])} | {rng([r['latency_ms']['p50'] for r in rs], 1)} | "
                          f"{rng([r['latency_ms']['p99'] for r in rs], 1)} | {sum(lost(r) for r in rs)} |")
    md += ["", "![memory per connection](bench/memory.svg)", ""]

    if proto:
        md += [f"### tidings over HTTP/1.1 and HTTP/2, {fmt(proto[0]['subscribers'])} subscribers", "",
               "The fan-out above, over HTTP/1.1 and over HTTP/2 with prior knowledge (`loadgen fanout "
               "--http2`: each subscriber's stream on a connection of its own, as each browser has its "
               "own). HTTP/1.1 streams are written by the server itself; HTTP/2 ones by hyper's h2.", "",
               "| protocol | KiB per idle connection | deliveries / CPU-s | p50 ms | p99 ms | lost |",
               "|---|---|---|---|---|---|"]
        for name, rs in [("HTTP/1.1", [r for r in proto if not r.get("http2")]), ("HTTP/2", [r for r in proto if r.get("http2")])]:
            if rs:
                md.append(f"| {name} | {rng([r['kib_per_connection'] for r in rs], 1)} | {rng([r['deliveries_per_cpu_second'] for r in rs])} | "
                          f"{rng([r['latency_ms']['p50'] for r in rs], 1)} | {rng([r['latency_ms']['p99'] for r in rs], 1)} | {sum(lost(r) for r in rs)} |")
        md += [""]

    if ws:
        wby = defaultdict(list)
        for r in ws:
            wby[(server_of(r), r["subscribers"])].append(r)
        wnames = {"tidings": "tidings", "axum-ws": "axum WebSocket (library buffers)", "axum-ws-tuned": "axum WebSocket (tuned buffers)",
                  "fastwebsockets": "fastwebsockets"}
        md += ["### WebSocket fan-out", "",
               "The fan-out above over WebSocket (`loadgen fanout --websocket`): tidings' `/ws` "
               "(`tidings.v1`, a JSON message per event) against the hand-written axum WebSocket "
               "broadcast server (`bench/src/bin/handwritten.rs`, `/ws`: one task per socket over a "
               "tokio broadcast channel, each event a text message of its data), with "
               "tokio-tungstenite's buffers as the library sets them (128 KiB each) and tuned "
               "(read 4 KiB, write 0), and the same server with fastwebsockets behind `/ws`.", "",
               "| server | subscribers | deliveries / CPU-s | tidings / it, same round | KiB per idle connection | p50 ms | p99 ms | lost |",
               "|---|---|---|---|---|---|---|---|"]
        for n in sorted({r["subscribers"] for r in ws}):
            mine = {r["label"]: r["deliveries_per_cpu_second"] for r in wby[("tidings", n)]}
            for s in ["tidings", "axum-ws", "axum-ws-tuned", "fastwebsockets"]:
                rs = wby[(s, n)]
                if not rs:
                    continue
                ratios = [mine[r["label"]] / r["deliveries_per_cpu_second"] for r in rs if r["label"] in mine and r["deliveries_per_cpu_second"] > 0]
                md.append(f"| {wnames[s]} | {fmt(n)} | {rng([r['deliveries_per_cpu_second'] for r in rs])} | "
                          f"{'–' if s == 'tidings' else rng(ratios, 2) + 'x'} | {rng([r['kib_per_connection'] for r in rs], 1)} | "
                          f"{rng([r['latency_ms']['p50'] for r in rs], 1)} | {rng([r['latency_ms']['p99'] for r in rs], 1)} | {sum(lost(r) for r in rs)} |")
        md += [""]

    if hub:
        hby = defaultdict(list)
        for r in hub:
            hby[(r["subscribers"], r.get("template_share", 0))].append(r)
        md += ["### The Mercure hub (`tidings-hub`)", "",
               "The fan-out above through `tidings-hub --store memory --anonymous`: subscribers "
               "`GET /.well-known/mercure?topic=…` with the topic's name, or with a URI template "
               "(`https://bench.example/topics/{name}`) for the share of them given; the publisher "
               "`POST`s a form with a JWT. Every update is one entry of the hub's one log, filtered "
               "per subscriber by its selectors (`docs/architecture.md`). Beside it, the medians of the "
               "hand-written server and Nchan at the same count from the fan-out above.", "",
               "| subscribers | templates | deliveries / CPU-s | KiB per idle subscriber | p50 ms | p99 ms | by hand, deliveries / CPU-s | Nchan, deliveries / CPU-s | lost |",
               "|---|---|---|---|---|---|---|---|---|"]
        for (n, share) in sorted(hby):
            rs = hby[(n, share)]
            med = lambda s: fmt(statistics.median(r["deliveries_per_cpu_second"] for r in by[(s, n)])) if by[(s, n)] else "-"
            md.append(f"| {fmt(n)} | {share} % | {rng([r['deliveries_per_cpu_second'] for r in rs])} | {rng([r['kib_per_connection'] for r in rs], 1)} | "
                      f"{rng([r['latency_ms']['p50'] for r in rs], 1)} | {rng([r['latency_ms']['p99'] for r in rs], 1)} | "
                      f"{med('handwritten')} | {med('nchan')} | {sum(lost(r) for r in rs)} |")
        md += [""]

    if lat:
        md += ["### Latency at a fixed rate", "",
               f"{fmt(lat[0]['subscribers'])} subscribers, 20 events/s for 10 s "
               f"({fmt(lat[0]['subscribers'] * 20)} deliveries/s): publish → receipt.", "",
               "| server | p50 ms | p99 ms | max ms | deliveries / CPU-s | lost |", "|---|---|---|---|---|---|"]
        for r in sorted(lat, key=lambda r: ORDER.index(server_of(r))):
            md.append(f"| {NAMES[server_of(r)]} | {fmt(r['latency_ms']['p50'], 1)} | {fmt(r['latency_ms']['p99'], 1)} | "
                      f"{fmt(r['latency_ms']['max'], 1)} | {fmt(r['deliveries_per_cpu_second'])} | {lost(r)} |")
        md += [""]

    if lp:
        md += ["### Long-polling (tidings)", "",
               "| waiting clients | events | deliveries / CPU-s | deliveries / s | KiB per waiting poll | p50 ms | p99 ms | lost |",
               "|---|---|---|---|---|---|---|---|"]
        for r in lp:
            md.append(f"| {fmt(r['opened'])} | {r['events']} | {fmt(r['deliveries_per_cpu_second'])} | {fmt(r['deliveries_per_second'])} | "
                      f"{fmt(r['kib_per_connection'], 1)} | {fmt(r['latency_ms']['p50'], 1)} | {fmt(r['latency_ms']['p99'], 1)} | {lost(r)} |")
        md += [""]

    if rep:
        md += ["### Replay: one SSE client reconnecting behind", "",
               "| store | events behind | replayed events / s | server CPU s | publish / s (one publisher, each awaited) | lost |",
               "|---|---|---|---|---|---|"]
        for r in rep:
            md.append(f"| {r['label'].removeprefix('replay ')} | {fmt(r['events'])} | {fmt(r['events_per_second'])} | "
                      f"{fmt(r['server_cpu_seconds'], 2)} | {fmt(r['publish_per_second'])} | {lost(r)} |")
        md += [""]
    md.append(END)

    def mean_series(key):
        series = {}
        for s in ORDER:
            pts = [(n, statistics.mean(r[key] for r in by[(s, n)])) for n in counts if by[(s, n)]]
            if pts:
                series[s] = pts
        return series
    return "\n".join(md) + "\n", mean_series


def main():
    args = sys.argv[1:]
    rows = load(args[0])
    if "--check" in args:
        bad = [r for r in rows if lost(r) or r.get("failed") or r.get("opened", 1) < r.get("subscribers", 0)]
        for r in rows:
            print(f"{r.get('label')}: {server_of(r)} {r.get('subscribers', '')} lost={lost(r)} failed={r.get('failed', 0)}")
        sys.exit(1 if bad or not rows else 0)
    docs = Path(args[args.index("--write") + 1])
    seconds = args[args.index("--seconds") + 1] if "--seconds" in args else "?"
    block, series = report(rows, seconds)
    (docs / "bench").mkdir(exist_ok=True)
    svg_lines("Fan-out: deliveries per server CPU-second", "SSE subscribers", "deliveries / CPU-s",
              series("deliveries_per_cpu_second"), docs / "bench" / "fanout.svg")
    svg_lines("Server memory per idle SSE connection", "SSE subscribers", "KiB per connection",
              series("kib_per_connection"), docs / "bench" / "memory.svg")
    path = docs / "benchmarks.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) + 1:]
    else:
        head, sep, rest = text.partition("\n## ")
        text = head.rstrip() + "\n\n## Side by side: `bench/run`\n\n" + block + "\n" + sep.lstrip("\n") + rest if sep else text + block
    path.write_text(text)


if __name__ == "__main__":
    main()
