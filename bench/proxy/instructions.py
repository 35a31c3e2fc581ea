"""User-space instructions per proxied request, counted: Presage, nginx and HAProxy.

A proxy's time per request moves more from one run to the next on this machine than
most changes to it do; the instructions it executes do not. Each proxy runs under
valgrind's callgrind (one worker, on CPU 1) in front of the bench's nginx upstream (a
fixed 1 KiB body); after WARMUP requests the counters are zeroed (`callgrind_control
-z`), then h2load sends N requests (`--h1 -c64`, or h2c `-c64 -m10`) and the counters
are dumped (`-d`): instructions / N. Kernel time is not counted (bench.py measures
time and CPU).

With --sim, callgrind also simulates the caches and the branch predictor, and each row
adds the simulated instruction-cache misses (I1mr), data-cache misses (D1mr + D1mw) and
mispredicted branches (Bcm + Bim) per request: where two builds run the same
instructions at different speeds (code layout, profile-guided optimisation), these say
why without hardware counters (this machine's VM exposes none).

usage: python3 bench/proxy/instructions.py [--sim] [BINARY ...]   (default target/release/presage)
Needs valgrind, h2load, nginx and haproxy (bench/proxy/run.sh installs all but valgrind).
"""

import glob
import os
import subprocess
import sys
import tempfile
import time

from bench import ROOT, SERVER_CPU, free_port, haproxy_conf, nginx_proxy_conf, upstream_conf, wait_port

WARMUP = 2000
N = {"h1": 20000, "h2": 40000}


SIM = ["--cache-sim=yes", "--branch-sim=yes"]


def count(name, cmd, port, proto, tmp, sim=False):
    """Events per request of `cmd` (listening on `port`) under `proto` load: {event: n},
    instructions (`Ir`), and with `sim` the simulated misses."""
    out = os.path.join(tmp, f"{name}-{proto}.cg")
    log = open(os.path.join(tmp, f"{name}-{proto}.log"), "w")
    vg = subprocess.Popen(
        ["taskset", "-c", SERVER_CPU, "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p"]
        + (SIM if sim else []) + cmd,
        stdout=log, stderr=log)
    try:
        wait_port(port, timeout=60)
        url = f"http://127.0.0.1:{port}/"
        load = ["taskset", "-c", "0", "h2load", "-c64", "-t1"] + (["--h1", "-m1"] if proto == "h1" else ["-m10"])
        subprocess.run(load + ["-n", str(WARMUP), url], check=True, capture_output=True)
        subprocess.run(["callgrind_control", "-z", str(vg.pid)], check=True, capture_output=True)
        res = subprocess.run(load + ["-n", str(N[proto]), url], check=True, capture_output=True, text=True).stdout
        if f"{N[proto]} succeeded" not in res:
            raise RuntimeError(f"{name} {proto}: not every request succeeded:\n{res}")
        subprocess.run(["callgrind_control", "-d", str(vg.pid)], check=True, capture_output=True)
        dump = None
        for _ in range(100):  # the dump is written by the proxy's own thread
            dumps = glob.glob(f"{out}.*.1")
            if dumps and open(dumps[0]).read().find("\ntotals:") >= 0:
                dump = dumps[0]
                break
            time.sleep(0.1)
        if not dump:
            raise RuntimeError(f"{name} {proto}: callgrind wrote no dump")
        lines = open(dump).read().splitlines()
        events = next(l for l in lines if l.startswith("events:")).split()[1:]
        totals = next(l for l in lines if l.startswith("totals:")).split()[1:]
        return {e: int(v) / N[proto] for e, v in zip(events, totals)}
    finally:
        vg.terminate()
        vg.wait(30)


def misses(ev):
    """Simulated I1 misses, D1 misses and mispredicted branches per request."""
    return ev.get("I1mr", 0), ev.get("D1mr", 0) + ev.get("D1mw", 0), ev.get("Bcm", 0) + ev.get("Bim", 0)


def main():
    args = sys.argv[1:]
    sim = args[:1] == ["--sim"]
    if sim:
        args = args[1:]
    binaries = args or [os.path.join(ROOT, "target/release/presage")]
    tmp = tempfile.mkdtemp(prefix="presage-instr-")
    up = free_port()
    up_conf = upstream_conf(tmp, up)
    upstream = subprocess.Popen(["taskset", "-c", SERVER_CPU, "nginx", "-c", up_conf])
    try:
        wait_port(up)
        rows = []
        for proto in ("h1", "h2"):
            targets = []
            for k, presage in enumerate(binaries):
                p = free_port()
                name = "presage" if len(binaries) == 1 else f"presage {k + 1}"
                targets.append((name, [presage, "proxy", "--listen", f"127.0.0.1:{p}",
                                       "--to", f"http://127.0.0.1:{up}", "--workers", "1"], p))
            n = free_port()
            ngx = nginx_proxy_conf(tmp, f"nginx-{proto}", up, **{proto: n}, master=False)
            targets.append(("nginx", ["nginx", "-c", ngx], n))
            h = free_port()
            hap = haproxy_conf(tmp, f"haproxy-{proto}", up, **{proto: h})
            targets.append(("haproxy", ["haproxy", "-f", hap], h))
            for name, cmd, port in targets:
                ev = count(name.replace(" ", ""), cmd, port, proto, tmp, sim)
                rows.append((proto, name, ev))
                extra = "  I1 misses {:,.0f}, D1 misses {:,.0f}, mispredicted branches {:,.0f}".format(*misses(ev)) if sim else ""
                print(f"{proto} {name:10s} {ev['Ir']:,.0f} instructions per request{extra}", flush=True)
        for k, presage in enumerate(binaries):
            if len(binaries) > 1:
                print(f"presage {k + 1}: {presage}")
        if sim:
            print("\n| proto | target | instructions | I1 misses | D1 misses | mispredicted branches |\n|---|---|---|---|---|---|")
            for proto, name, ev in rows:
                print(f"| {proto} | {name} | {ev['Ir']:,.0f} | " + " | ".join(f"{x:,.0f}" for x in misses(ev)) + " |")
        else:
            print("\n| proto | target | instructions per request |\n|---|---|---|")
            for proto, name, ev in rows:
                print(f"| {proto} | {name} | {ev['Ir']:,.0f} |")
        print("(per request)")
    finally:
        upstream.terminate()
        upstream.wait(10)


if __name__ == "__main__":
    main()
