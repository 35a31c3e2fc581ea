"""Workflow engine benchmark: what a composite service costs in the proxy.

One Presage proxy (one worker) in front of an nginx upstream that answers a small JSON
body, on CPU 1; the load generator (h2load over HTTP/1.1, 32 connections) on CPU 0.
Targets, interleaved in each round, medians over rounds:

- route:   POST /direct, proxied to the upstream (the baseline: one request, one call);
- one:     POST /workflows/one, a workflow of one call step (the engine's fixed cost);
- three:   POST /workflows/three, three sequential call steps, the second and third
           templated from the first's answer (the per-step cost);
- fan:     POST /workflows/fan, three calls in parallel branches.

Reported: requests/s, mean latency, the proxy's CPU-seconds per 10k requests, and the
upstream calls per second the proxy made (requests x calls per request).
Usage: python3 bench/workflow/bench.py [ROUNDS]  (needs target/release/presage).
"""

import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRESAGE = os.environ.get("PRESAGE", os.path.join(ROOT, "target/release/presage"))
LOADGEN_CPU, SERVER_CPU = "0", "1"
DURATION = 6
CALLS = {"route": 1, "one": 1, "three": 3, "fan": 3}
PATHS = {"route": "/direct", "one": "/workflows/one", "three": "/workflows/three", "fan": "/workflows/fan"}


def _proxy_bench():
    """bench/proxy/bench.py, for its helpers (ports, /proc CPU time)."""
    import importlib.util
    path = os.path.join(ROOT, "bench/proxy/bench.py")
    spec = importlib.util.spec_from_file_location("proxy_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_P = _proxy_bench()
free_port, wait_port = _P.free_port, _P.wait_port


def cpu_seconds(pid):
    return _P.cpu_seconds([pid])


def start(cmd, port, log):
    p = subprocess.Popen(["taskset", "-c", SERVER_CPU] + cmd, stdout=log, stderr=log)
    wait_port(port)
    return p


def h2load(url, body):
    out = subprocess.run(
        ["taskset", "-c", LOADGEN_CPU, "h2load", "--h1", "-c", "32", "-t", "1",
         "-D", str(DURATION), "-d", body, "-H", "content-type: application/json", url],
        capture_output=True, text=True, check=True).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    if not (done and codes and mean):
        raise RuntimeError(f"unexpected h2load output:\n{out}")
    ok = int(codes.group(1))
    failed = int(done.group(1)) - ok
    m = mean.group(1)
    ms = float(m[:-2]) if m.endswith("ms") else float(m[:-2]) / 1000 if m.endswith("us") else float(m[:-1]) * 1000
    return ok / DURATION, ms, failed


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    tmp = tempfile.mkdtemp(prefix="presage-wf-bench-")
    log = open(os.path.join(tmp, "servers.log"), "w")
    up = free_port()
    conf = _P.upstream_conf(tmp, up, body="""'{"service":"up","id":"a1","items":[1,2,3]}'""",
                            content_type="application/json")
    port = free_port()
    cfg = os.path.join(tmp, "presage.yaml")
    open(cfg, "w").write(f"""
listeners: [{{ name: main, address: "127.0.0.1:{port}" }}]
runtime: {{ workers: 1 }}
routes: [{{ match: {{ path: {{ prefix: /direct }} }}, cluster: up }}]
clusters: [{{ name: up, endpoints: [{{ address: "127.0.0.1:{up}" }}] }}]
workflows:
  - name: one
    steps: [ {{ name: a, call: {{ service: up, path: "/a/{{{{ input.user }}}}" }} }} ]
  - name: three
    steps:
      - {{ name: a, call: {{ service: up, path: "/a/{{{{ input.user }}}}" }} }}
      - {{ name: b, call: {{ service: up, path: "/b/{{{{ steps.a.body.id }}}}" }} }}
      - {{ name: c, call: {{ service: up, method: POST, path: /c, body: '{{"items": {{{{ steps.a.body.items | tojson }}}}}}' }} }}
    output: "[steps.a.body.id, steps.b.body.service, steps.c.body.items]"
  - name: fan
    steps:
      - name: all
        parallel:
          - steps: [ {{ name: x, call: {{ service: up, path: /x }} }} ]
          - steps: [ {{ name: y, call: {{ service: up, path: /y }} }} ]
          - steps: [ {{ name: z, call: {{ service: up, path: /z }} }} ]
""")
    body = os.path.join(tmp, "body.json")
    open(body, "w").write('{"user": "u42"}')
    upstream = start(["nginx", "-c", conf], up, log)
    proxy = start([PRESAGE, "proxy", "--config", cfg], port, log)
    results = {t: [] for t in CALLS}
    try:
        for _ in range(rounds):
            for t in CALLS:
                c0 = cpu_seconds(proxy.pid)
                rps, ms, failed = h2load(f"http://127.0.0.1:{port}{PATHS[t]}", body)
                cpu = cpu_seconds(proxy.pid) - c0
                results[t].append((rps, ms, cpu * 10000 / max(rps * DURATION, 1), failed))
    finally:
        for p in (proxy, upstream):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    print(f"Medians over {rounds} round(s); 1 worker; h2load --h1 -c32 on CPU 0, proxy and nginx upstream on CPU 1.\n")
    print("| target | calls/request | req/s | mean ms | upstream calls/s | CPU-s/10k req | failed |")
    print("|---|---|---|---|---|---|---|")
    base = None
    med = {}
    for t in CALLS:
        r = results[t]
        rps = statistics.median(x[0] for x in r)
        ms = statistics.median(x[1] for x in r)
        cpu = statistics.median(x[2] for x in r)
        failed = sum(x[3] for x in r)
        med[t] = (rps, ms, cpu)
        base = base or rps
        print(f"| {t} | {CALLS[t]} | {rps:.0f} | {ms:.3f} | {rps * CALLS[t]:.0f} | {cpu:.3f} | {failed} |")
    print()
    r, o, th, f = (med[t] for t in ("route", "one", "three", "fan"))
    print(f"one-step workflow vs the plain route: {o[0] / r[0]:.2f}x throughput, {o[2] / r[2]:.2f}x CPU per request")
    print(f"each further step: {(th[2] - o[2]) / 2:.3f} CPU-s/10k requests (the route's whole request: {r[2]:.3f})")
    print(f"fan-out of three vs three in sequence: {f[1] / th[1]:.2f}x mean latency")


if __name__ == "__main__":
    main()
