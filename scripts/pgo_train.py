"""The training run of scripts/pgo.sh: an instrumented presage does the work its
benchmarks measure, and each process writes its profile when it exits.

- the proxy from a config file (HTTP/1.1, h2c and TLS listeners, a few routes, a POST
  body streamed) under h2load, in front of the bench's nginx upstream;
- the same proxy as a sidecar: a control plane's streams and load reports;
- `presage forecast` on windows of the shared traces, with and without known seasons;
- `presage replay` of the planner and the baselines on a shared trace.

usage: python3 scripts/pgo_train.py INSTRUMENTED_BINARY
"""

import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench", "proxy"))
from bench import free_port, self_signed, upstream_conf, wait_port  # noqa: E402

TRACES = os.path.join(os.path.dirname(ROOT), "shared", "traces")


def load(args):
    out = subprocess.run(["h2load", "-t1"] + args, capture_output=True, text=True, check=True).stdout
    if " 0 failed" not in out:
        raise RuntimeError(f"h2load {args}: requests failed:\n{out}")


def stop(proc):
    """SIGTERM and wait: the profile is written as the process exits."""
    proc.terminate()
    if proc.wait(60) != 0:
        raise RuntimeError(f"{proc.args[:2]} exited with {proc.returncode}: no profile")


def config(tmp, up, cp=None):
    p1, p2, pt = free_port(), free_port(), free_port()
    self_signed(tmp)
    path = os.path.join(tmp, "proxy.yaml")
    with open(path, "w") as f:
        f.write(f"""listeners:
  - {{ name: h1, address: "127.0.0.1:{p1}" }}
  - {{ name: h2, address: "127.0.0.1:{p2}" }}
  - {{ name: tls, address: "127.0.0.1:{pt}", tls: {{ cert: cert.pem, key: key.pem }} }}
runtime: {{ workers: 1 }}
routes:
  - {{ name: api, match: {{ path: {{ prefix: /api/ }} }}, cluster: up, rewrite: {{ prefix: / }} }}
  - {{ name: default, cluster: up }}
clusters: [{{ name: up, endpoints: [{{ address: "127.0.0.1:{up}" }}] }}]
""")
        if cp:
            f.write(f'control_plane: {{ address: "http://127.0.0.1:{cp}", node_id: pgo-1, report_interval: 100ms }}\n')
    return path, p1, p2, pt


def proxy(exe, tmp, up, requests, cp=None):
    path, p1, p2, pt = config(tmp, up, cp)
    proc = subprocess.Popen([exe, "proxy", "--config", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for p in (p1, p2, pt):
            wait_port(p)
        body = os.path.join(tmp, "body")
        with open(body, "wb") as f:
            f.write(b"y" * 4096)
        load(["--h1", "-c64", "-n", str(requests), f"http://127.0.0.1:{p1}/"])
        load(["--h1", "-c16", "-n", str(requests // 10), f"http://127.0.0.1:{p1}/api/x"])
        load(["-c64", "-m10", "-n", str(2 * requests), f"http://127.0.0.1:{p2}/"])
        load(["-c16", "-m10", "-n", str(requests // 10), "-d", body, f"http://127.0.0.1:{p2}/api/upload"])
        load(["-c16", "-m10", "-n", str(requests // 5), f"https://127.0.0.1:{pt}/"])
        load(["--h1", "-c16", "-n", str(requests // 10), f"https://127.0.0.1:{pt}/"])
    finally:
        stop(proc)


def sidecar(exe, tmp, up):
    grpc = free_port()
    cp = subprocess.Popen([exe, "control-plane", "--grpc", f"127.0.0.1:{grpc}", "--api", f"127.0.0.1:{free_port()}",
                           "--store", os.path.join(tmp, "cp.redb")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(grpc)
        proxy(exe, tmp, up, 20000, cp=grpc)
    finally:
        stop(cp)


def window(tmp, name, rows):
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.write("timestamp,value\n")
        f.writelines(f"{i},{v}\n" for i, v in enumerate(rows))
    return path


def forecast(exe, tmp):
    with open(os.path.join(TRACES, "nasa-http-1995", "nasa_1995_per_minute.csv")) as f:
        minutes = [float(l.split(",")[1]) for l in list(f)[1:]]
    five = [sum(minutes[i:i + 5]) for i in range(0, len(minutes) - 4, 5)]
    with open(os.path.join(TRACES, "nab", "nyc_taxi.csv")) as f:
        taxi = [float(l.split(",")[1]) for l in list(f)[1:]]
    runs = [
        ([window(tmp, f"nasa5-{k}.csv", five[k * 288:k * 288 + 2016]) for k in range(4)], ["--season", "288"], 12),
        ([window(tmp, f"nasa1-{k}.csv", minutes[k * 1440:k * 1440 + 2880]) for k in range(2)], ["--season", "1440"], 60),
        ([window(tmp, f"taxi-{k}.csv", taxi[k * 48:k * 48 + 1344]) for k in range(3)], ["--season", "48", "--season", "336"], 12),
        ([window(tmp, "nasa5-detect.csv", five[:2016])], [], 12),
    ]
    for inputs, seasons, horizon in runs:
        args = [exe, "forecast", "--horizon", str(horizon)] + seasons
        for p in inputs:
            args += ["--input", p]
        subprocess.run(args, check=True, capture_output=True)


def replay(exe):
    trace = os.path.join(TRACES, "nasa-http-1995", "nasa_1995_per_minute.csv")
    for policy in ("presage", "hpa", "kpa", "oracle"):
        subprocess.run([exe, "replay", "--trace", trace, "--capacity", "2", "--cold-start", "30",
                        "--policy", policy, "--json"], check=True, capture_output=True)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    exe = os.path.abspath(sys.argv[1])
    with tempfile.TemporaryDirectory(prefix="presage-pgo-") as tmp:
        up = free_port()
        nginx = subprocess.Popen(["nginx", "-c", upstream_conf(tmp, up)])
        try:
            wait_port(up)
            proxy(exe, tmp, up, 100000)
            sidecar(exe, tmp, up)
        finally:
            nginx.terminate()
            nginx.wait(10)
        forecast(exe, tmp)
        replay(exe)
    print("training done")


if __name__ == "__main__":
    main()
