"""Reverse-proxy benchmark: direct-to-upstream, Presage, nginx and HAProxy in one run.

Layout (as a sidecar shares a pod with its app): the load generator runs on CPU 0; the
proxy under test and the upstream share CPU 1. Every proxy gets one worker and keep-alive
to the upstream. Each round measures every target in turn (interleaved), and the report
is the median over rounds:

- max throughput: wrk -t1 -c64 (HTTP/1.1) and h2load -c64 -m10 (h2c), 8 s each;
- CPU-seconds per 10k requests of the proxy's processes during those runs (from /proc);
- latency p50/p99/p99.9 at a fixed rate of half nginx's maximum (oha, latency-corrected);
- RSS of the proxy's processes once warm (one HTTP/1.1 and one h2c request served,
  before any load: what an idle sidecar holds) and at peak (VmHWM, after every run).
"""

import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# PRESAGE=BINARY measures another build than the plain release one (e.g. target/pgo/presage
# from scripts/pgo.sh).
PRESAGE = os.environ.get("PRESAGE") or os.path.join(ROOT, "target/release/presage")
LOADGEN_CPU, SERVER_CPU = "0", "1"
DURATION = 8
BODY = "x" * 1024
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def pids_of(root_pid):
    """The process and its children (nginx master + worker)."""
    out = [root_pid]
    try:
        kids = open(f"/proc/{root_pid}/task/{root_pid}/children").read().split()
        out += [int(k) for k in kids]
    except OSError:
        pass
    return out


def cpu_seconds(pids):
    total = 0
    for p in pids:
        try:
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])  # utime + stime
        except OSError:
            pass
    return total / TICK


def self_signed(tmp):
    """A P-256 certificate for localhost and its key: tmp/cert.pem, tmp/key.pem."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", "/CN=localhost", "-days", "1", "-keyout", os.path.join(tmp, "key.pem"),
                    "-out", os.path.join(tmp, "cert.pem")], check=True, capture_output=True)


def rss_kib(pids, field="VmHWM"):
    total = 0
    for p in pids:
        try:
            m = re.search(rf"{field}:\s+(\d+)", open(f"/proc/{p}/status").read())
            total += int(m.group(1)) if m else 0
        except OSError:
            pass
    return total


def warm_rss_kib(t):
    """RSS after one HTTP/1.1 and one h2c request through the target, before any load."""
    for port, flag in ((t.h1, "--http1.1"), (t.h2, "--http2-prior-knowledge")):
        subprocess.run(["curl", "-s", "-o", "/dev/null", flag, f"http://127.0.0.1:{port}/"], check=True)
    return rss_kib(t.pids(), "VmRSS")


class Target:
    def __init__(self, name, cmd, h1_port, h2_port, tmp):
        self.name, self.h1, self.h2 = name, h1_port, h2_port
        self.proc = None
        if cmd:
            log = open(os.path.join(tmp, f"{name}.log"), "w")
            self.proc = subprocess.Popen(["taskset", "-c", SERVER_CPU] + cmd, stdout=log, stderr=log)
            wait_port(h1_port)
            wait_port(h2_port)
            time.sleep(0.3)  # let nginx fork its worker before we sample /proc

    def pids(self):
        return pids_of(self.proc.pid) if self.proc else []

    def stop(self):
        if self.proc:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_all(tmp):
    up1, up2 = free_port(), free_port()
    nginx_up = upstream_conf(tmp, up1, h2=up2)
    upstream = Target("upstream", ["nginx", "-c", nginx_up], up1, up2, tmp)
    targets = [Target("direct", None, up1, up2, tmp)]

    p1, p2 = free_port(), free_port()
    presage_cfg = os.path.join(tmp, "presage.yaml")
    open(presage_cfg, "w").write(f"""
listeners:
  - {{ name: h1, address: "127.0.0.1:{p1}" }}
  - {{ name: h2, address: "127.0.0.1:{p2}" }}
runtime: {{ workers: 1 }}
routes: [{{ cluster: up }}]
clusters: [{{ name: up, endpoints: [{{ address: "127.0.0.1:{up1}" }}] }}]
""")
    targets.append(Target("presage", [PRESAGE, "proxy", "--config", presage_cfg], p1, p2, tmp))
    # PRESAGE_BEFORE=BINARY measures another build (e.g. the previous commit's) in the
    # same run, to tell a change's effect from the machine's noise.
    before = os.environ.get("PRESAGE_BEFORE")
    if before:
        b1, b2 = free_port(), free_port()
        before_cfg = os.path.join(tmp, "presage-before.yaml")
        open(before_cfg, "w").write(open(presage_cfg).read().replace(f":{p1}\"", f":{b1}\"").replace(f":{p2}\"", f":{b2}\""))
        targets.append(Target("before", [before, "proxy", "--config", before_cfg], b1, b2, tmp))

    n1, n2 = free_port(), free_port()
    nginx_cfg = nginx_proxy_conf(tmp, "nginx", up1, h1=n1, h2=n2)
    targets.append(Target("nginx", ["nginx", "-c", nginx_cfg], n1, n2, tmp))

    h1, h2 = free_port(), free_port()
    haproxy_cfg = haproxy_conf(tmp, "haproxy", up1, h1=h1, h2=h2)
    targets.append(Target("haproxy", ["haproxy", "-f", haproxy_cfg], h1, h2, tmp))
    return upstream, targets


def upstream_conf(tmp, h1, h2=None, body=f'"{BODY}"', content_type="text/plain"):
    """nginx as a fixed upstream (one worker, keep-alive) answering every request with
    `body` (an nginx string, quoted), HTTP/1.1 on `h1` and h2c on `h2`; returns the
    config's path."""
    servers = f"  server {{ listen 127.0.0.1:{h1}; location / {{ return 200 {body}; }} }}\n"
    if h2:
        servers += f"  server {{ listen 127.0.0.1:{h2} http2; location / {{ return 200 {body}; }} }}\n"
    path = os.path.join(tmp, "upstream.conf")
    open(path, "w").write(f"""
worker_processes 1; daemon off; pid {tmp}/upstream.pid; error_log stderr error;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 1000000; keepalive_timeout 300s; default_type {content_type};
{servers}}}
""")
    return path


def nginx_proxy_conf(tmp, name, upstream, h1=None, h2=None, master=True):
    """nginx as a reverse proxy to `upstream` (one worker, keep-alive), listening for
    HTTP/1.1 on `h1` and h2c on `h2`; returns the config's path. Without `master` the
    worker is the process started (for tools that follow one process)."""
    listens = (f"listen 127.0.0.1:{h1}; " if h1 else "") + (f"listen 127.0.0.1:{h2} http2;" if h2 else "")
    path = os.path.join(tmp, f"{name}.conf")
    open(path, "w").write(f"""
worker_processes 1; daemon off; {"" if master else "master_process off; "}pid {tmp}/{name}.pid; error_log stderr error;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 1000000;
  upstream up {{ server 127.0.0.1:{upstream}; keepalive 128; }}
  server {{ {listens}
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
""")
    return path


def haproxy_conf(tmp, name, upstream, h1=None, h2=None):
    """HAProxy as a reverse proxy to `upstream` (one thread, connection reuse), bound for
    HTTP/1.1 on `h1` and h2c on `h2`; returns the config's path."""
    binds = (f"  bind 127.0.0.1:{h1}\n" if h1 else "") + (f"  bind 127.0.0.1:{h2} proto h2\n" if h2 else "")
    path = os.path.join(tmp, f"{name}.cfg")
    open(path, "w").write(f"""
global
  nbthread 1
  maxconn 5000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
frontend fe
{binds}  default_backend be
backend be
  server s1 127.0.0.1:{upstream}
""")
    return path


def loadgen(cmd):
    return subprocess.run(["taskset", "-c", LOADGEN_CPU] + cmd, capture_output=True, text=True, check=True).stdout


def max_throughput(t, proto):
    url = f"http://127.0.0.1:{t.h1 if proto == 'h1' else t.h2}/"
    before = cpu_seconds(t.pids())
    if proto == "h1":
        out = loadgen(["wrk", "-t1", "-c64", f"-d{DURATION}s", url])
        reqs = int(re.search(r"(\d+) requests in", out).group(1))
        errors = sum(int(x) for x in re.findall(r"(?:Non-2xx or 3xx responses|Socket errors: connect \d+, read \d+, write \d+, timeout) ?:? ?(\d+)", out))
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    else:
        out = loadgen(["h2load", "-c64", "-m10", "-t1", "-D", str(DURATION), url])
        m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
        reqs, errors = int(m.group(2)), int(m.group(3))
        rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    cpu = cpu_seconds(t.pids()) - before
    return rps, (cpu / reqs * 10000 if reqs and t.proc else None), errors


def latency_at(t, proto, rate):
    url = f"http://127.0.0.1:{t.h1 if proto == 'h1' else t.h2}/"
    cmd = ["oha", "--no-tui", "--output-format", "json", "-z", f"{DURATION}s", "-q", str(int(rate)), "-c", "16", "--latency-correction"]
    if proto == "h2":
        cmd.append("--http2")
    out = json.loads(loadgen(cmd + [url]))
    p = out["latencyPercentiles"]
    return p["p50"] * 1e3, p["p99"] * 1e3, p["p99.9"] * 1e3


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    tmp = tempfile.mkdtemp(prefix="presage-bench-")
    upstream, targets = start_all(tmp)
    res = {}
    try:
        warm = {t.name: warm_rss_kib(t) / 1024 for t in targets if t.proc}
        for r in range(rounds):
            order = targets[r % len(targets):] + targets[: r % len(targets)]
            for proto in ("h1", "h2"):
                for t in order:
                    rps, cpu, err = max_throughput(t, proto)
                    res.setdefault((t.name, proto, "rps"), []).append(rps)
                    res.setdefault((t.name, proto, "cpu"), []).append(cpu)
                    res.setdefault((t.name, proto, "err"), []).append(err)
                    print(f"round {r + 1} {proto} {t.name:8} {rps:9.0f} req/s  cpu/10k {cpu or 0:.3f}  errors {err}", flush=True)
            for proto in ("h1", "h2"):
                rate = 0.5 * median(res[("nginx", proto, "rps")])
                for t in order:
                    lat = latency_at(t, proto, rate)
                    for k, v in zip(("p50", "p99", "p999"), lat):
                        res.setdefault((t.name, proto, k), []).append(v)
                    print(f"round {r + 1} {proto} {t.name:8} @{rate:.0f}/s  p50 {lat[0]:.3f} ms  p99 {lat[1]:.3f}  p99.9 {lat[2]:.3f}", flush=True)
        rss = {t.name: (warm[t.name], rss_kib(t.pids()) / 1024) for t in targets if t.proc}
    finally:
        for t in targets:
            t.stop()
        upstream.stop()
    report(res, rss, rounds)


def report(res, rss, rounds):
    m = lambda n, p, k: median(res.get((n, p, k), []))
    print(f"\nMedians over {rounds} round(s); 1 worker each; loadgen on CPU {LOADGEN_CPU}, proxy+upstream on CPU {SERVER_CPU}.\n")
    print("| proto | target | max req/s | CPU-s/10k req | p50 ms | p99 ms | p99.9 ms | added p50 ms | RSS MiB warm / peak | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for proto in ("h1", "h2"):
        direct = m("direct", proto, "p50")
        for n in ("direct", "presage", "nginx", "haproxy", "before"):
            if (n, proto, "rps") not in res:
                continue
            cpu = m(n, proto, "cpu")
            added = m(n, proto, "p50") - direct if n != "direct" else 0.0
            print(f"| {proto} | {n} | {m(n, proto, 'rps'):.0f} | {'-' if cpu is None else f'{cpu:.3f}'} | {m(n, proto, 'p50'):.3f} | "
                  f"{m(n, proto, 'p99'):.3f} | {m(n, proto, 'p999'):.3f} | {added:+.3f} | {'%.1f / %.1f' % rss[n] if n in rss else '-'} | {sum(res[(n, proto, 'err')])} |")
    print("\nPresage's ratios (throughput: higher is better; CPU and added latency: lower is better):\n")
    print("| proto | vs | throughput | CPU per request | added p50 |")
    print("|---|---|---|---|---|")
    for proto in ("h1", "h2"):
        direct = m("direct", proto, "p50")
        pa = m("presage", proto, "p50") - direct
        for peer in ("nginx", "haproxy", "before"):
            if (peer, proto, "rps") not in res:
                continue
            qa = m(peer, proto, "p50") - direct
            print(f"| {proto} | {peer} | {m('presage', proto, 'rps') / m(peer, proto, 'rps'):.2f} | "
                  f"{m('presage', proto, 'cpu') / m(peer, proto, 'cpu'):.2f} | {pa:+.3f} vs {qa:+.3f} ms |")


if __name__ == "__main__":
    main()
