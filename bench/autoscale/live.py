#!/usr/bin/env python3
"""Live replay (issue 7): a real request trace, compressed in time, through the real
control plane, proxy and local-process actuator with real HTTP load; the planner with
prediction on, then off (reactive floor only), on a fresh store each.

Each instance is `presage sample-service` with a 50 ms service time and one request at a
time (20 req/s: queueing beyond it, as a real saturated instance) and a 5 s start-up.
The segment is preceded by a warm-up (the trace's steps before it, not measured), so
both arms start from the state the load before it left. The load generator is open loop: every trace step's requests are sent at their
scheduled times over keep-alive connections (a new one when none is idle), so a slow
instance does not slow the offered load. A request slower than --slow-ms counts as
slow. Instance-seconds integrate the instances launched (ready, starting or warm) as
`/v1/autoscaling` reports them every half second.

    python3 bench/autoscale/live.py [--trace tests/fixtures/traces/nasa_5min_14d.csv]
        [--from-day 4] [--days 2] [--step 0.5] [--peak 100] [--arms on,off]
"""

import argparse
import asyncio
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_trace(path, from_day, days, peak, warmup, steps_per_day=288):
    """Rates (req/s) of the segment, preceded by `warmup` steps of the trace before it."""
    counts = [int(r["count"]) for r in csv.DictReader(open(path))]
    start = from_day * steps_per_day
    seg = counts[max(0, start - warmup):start + days * steps_per_day]
    k = peak / max(seg)
    return [c * k for c in seg]


def start(cmd, until, env=None):
    """Starts `cmd`, reads stdout until a line starts with `until`; returns (proc, lines)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    lines = []
    deadline = time.time() + 60
    while time.time() < deadline:
        line = p.stdout.readline()
        if not line:
            raise SystemExit(f"{cmd[1]} exited while starting: {lines}")
        lines.append(line.strip())
        if line.startswith(until):
            return p, lines
    raise SystemExit(f"{cmd[1]} did not start: {lines}")


def after(lines, prefix):
    return next(l[len(prefix):] for l in lines if l.startswith(prefix))


def get_json(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


class Pool:
    """Keep-alive HTTP/1.1 connections to one address; a new one when none is idle."""

    def __init__(self, host, port):
        self.host, self.port, self.idle = host, port, []

    async def get(self, path):
        conn = self.idle.pop() if self.idle else await asyncio.open_connection(self.host, self.port)
        reader, writer = conn
        writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        self.idle.append(conn)
        return status


async def offer(url_host, url_port, rates, step_s, slow_ms, warmup):
    pool = Pool(url_host, url_port)
    lat, errors = [], 0
    tasks = []

    async def one(at, measured):
        nonlocal errors
        delay = at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        t0 = time.monotonic()
        try:
            status = await asyncio.wait_for(pool.get("/api"), 10)
            failed = status >= 500
        except Exception:
            failed = True
        if measured:
            errors += failed
            lat.append((time.monotonic() - t0) * 1000)

    t0 = time.monotonic() + 0.5
    carry = 0.0
    for i, rate in enumerate(rates):
        n = rate * step_s + carry
        k = int(n)
        carry = n - k
        for j in range(k):
            at = t0 + (i + (j + 0.5) / k) * step_s
            tasks.append(asyncio.ensure_future(one(at, i >= warmup)))
        # Keep the scheduler ahead of time without creating every task at once.
        ahead = t0 + (i - 2) * step_s - time.monotonic()
        if ahead > 0:
            await asyncio.sleep(ahead)
    await asyncio.gather(*tasks)
    lat.sort()
    slow = sum(1 for x in lat if x > slow_ms)
    p99 = lat[int(0.99 * (len(lat) - 1))] if lat else 0.0
    return {"requests": len(lat), "slow": slow, "errors": errors, "p99_ms": round(p99, 1)}


def run_arm(bin_path, rates, args, predictive):
    work = tempfile.mkdtemp(prefix="presage-live-")
    cfg = os.path.join(work, "cp.yaml")
    command = [bin_path, "sample-service", "--listen", "127.0.0.1:{port}", "--name", "api-{index}",
               "--delay-ms", "50", "--concurrency", "1", "--startup-delay", f"{args.cold_start}s"]
    with open(cfg, "w") as f:
        f.write(f"""grpc: 127.0.0.1:0
api: 127.0.0.1:0
store: {work}/cp.redb
forecast_interval: 2s
services:
  - name: api
routes:
  - {{ name: api, cluster: api }}
autoscaling:
  interval: 1s
  services:
    - service: api
      capacity_rps: 20
      min: 1
      max: 16
      cold_start: {args.cold_start}s
      scale_down_delay: 20s
      learn_capacity: false
      predictive: {"true" if predictive else "false"}
      actuator:
        local:
          command: {json.dumps(command)}
          ready_path: /healthz
          drain: 500ms
""")
    cp, lines = start([bin_path, "control-plane", "--config", cfg], "presage: ready")
    grpc, api = after(lines, "presage: grpc on "), after(lines, "presage: api on ")
    pcfg = os.path.join(work, "proxy.yaml")
    with open(pcfg, "w") as f:
        f.write(f"""listeners:
  - name: main
    address: 127.0.0.1:0
admin:
  address: 127.0.0.1:0
control_plane:
  address: http://{grpc}
  node_id: live-bench
  report_interval: 500ms
""")
    proxy, plines = start([bin_path, "proxy", "--config", pcfg], "presage: synced with the control plane")
    listen = after(plines, "presage: listener main on ")
    host, port = listen.rsplit(":", 1)
    # The first instance up before the trace starts.
    while True:
        s = get_json(f"http://{api}/v1/autoscaling")
        if s and s[0]["status"]["ready"] >= 1:
            break
        time.sleep(0.2)
    inst = {"seconds": 0.0}
    stop = {"now": False}

    async def watch():
        # Counted from the end of the warm-up.
        last = time.monotonic() + 0.5 + args.warmup * args.step
        while not stop["now"]:
            await asyncio.sleep(0.5)
            s = await asyncio.to_thread(get_json, f"http://{api}/v1/autoscaling")
            now = time.monotonic()
            st = s[0]["status"]
            if now > last:
                inst["seconds"] += (now - last) * (st["ready"] + st["starting"] + st["warm_ready"])
                last = now

    async def main():
        w = asyncio.ensure_future(watch())
        out = await offer(host, int(port), rates, args.step, args.slow_ms, args.warmup)
        stop["now"] = True
        await w
        return out

    out = asyncio.run(main())
    decisions = get_json(f"http://{api}/v1/decisions?service=api&limit=1000")
    for p in (proxy, cp):
        p.terminate()
        p.wait(timeout=30)
    out.update({
        "arm": "prediction on" if predictive else "prediction off",
        "slow_share": round(out["slow"] / max(out["requests"], 1), 5),
        "instance_seconds": round(inst["seconds"], 1),
        "decisions": len(decisions),
    })
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trace", default=os.path.join(ROOT, "tests/fixtures/traces/nasa_5min_14d.csv"))
    ap.add_argument("--from-day", type=int, default=4)
    ap.add_argument("--days", type=int, default=2)
    ap.add_argument("--step", type=float, default=0.5, help="seconds of replay per 5-minute step")
    ap.add_argument("--peak", type=float, default=100.0, help="the segment's peak, requests/s")
    ap.add_argument("--cold-start", type=float, default=5.0, help="instance start-up, seconds")
    ap.add_argument("--slow-ms", type=float, default=250.0)
    ap.add_argument("--warmup", type=int, default=36,
                    help="steps before the segment replayed first and not measured")
    ap.add_argument("--arms", default="on,off")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/presage"))
    args = ap.parse_args()
    rates = load_trace(args.trace, args.from_day, args.days, args.peak, args.warmup)
    print(f"trace {os.path.basename(args.trace)} days {args.from_day}..{args.from_day + args.days}: "
          f"{len(rates) - args.warmup} steps (+{args.warmup} warm-up) of {args.step} s, peak {args.peak} req/s, cold start {args.cold_start} s",
          file=sys.stderr)
    results = [run_arm(args.bin, rates, args, arm == "on") for arm in args.arms.split(",")]
    print("arm,requests,slow,slow_share,errors,p99_ms,instance_seconds,decisions")
    for r in results:
        print(f"{r['arm']},{r['requests']},{r['slow']},{r['slow_share']},{r['errors']},"
              f"{r['p99_ms']},{r['instance_seconds']},{r['decisions']}")
    if len(results) == 2:
        on, off = results
        print(f"# on/off: slow {on['slow'] / max(off['slow'], 1):.2f}x, "
              f"instance-seconds {on['instance_seconds'] / max(off['instance_seconds'], 1):.2f}x")


if __name__ == "__main__":
    main()
