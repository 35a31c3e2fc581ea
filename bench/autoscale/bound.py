"""What knowing the future 5-minute means would buy on a per-minute trace: a reference
point for issue 7's targets, for forecasters that cannot foresee single minutes.

The "mean clairvoyant" knows each coming 5-minute window's mean rate exactly (never a
minute of it) and has ceil(k * mean / capacity) instances ready through the window, for
a sweep of headroom factors k. Accounting as `presage replay` counts (the trace on its
time grid, missing minutes as zero; arrivals uniform within each minute; requests above
ready capacity violate the SLO; an instance costs its seconds, at least one instance);
no cold start is paid. It is not a bound on every policy: one that reacts within a
window, or sizes its headroom per window, can do better. HPA's and the oracle's numbers
come from `presage replay` at the given cold start. Capacity per instance as in
bench.py (the 95th-percentile rate needs 10 instances).

usage: python3 bench/autoscale/bound.py [--cold-start S] [TRACE ...]
(default: the two per-minute traces)
"""

import csv
import json
import math
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

DEFAULT = [
    "nasa-http-1995/nasa_1995_per_minute.csv",
    "twitter-stream-2021-08/twitter_stream_per_minute.csv",
]
WINDOW = 5
HEADROOM = (1.0, 1.2, 1.4, 1.5, 1.6, 1.7, 1.8, 2.0)


def replay(path, cap, cold, policy):
    out = subprocess.run(
        [bench.PRESAGE, "replay", "--trace", path, "--capacity", f"{cap:.6g}",
         "--cold-start", str(cold), "--policy", policy, "--json"],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def on_grid(path):
    """Counts per minute from the first row's timestamp on, missing minutes as zero (as
    `presage replay` loads a trace; the timestamps here are Unix or relative seconds)."""
    with open(path) as f:
        rows = [(float(t), float(v)) for t, v in list(csv.reader(f))[1:]]
    t0 = rows[0][0]
    counts = [0.0] * (round((rows[-1][0] - t0) / 60) + 1)
    for t, v in rows:
        counts[round((t - t0) / 60)] += v
    return counts


def clairvoyant(counts, cap, k):
    violations = cost = 0.0
    for i in range(0, len(counts), WINDOW):
        window = counts[i:i + WINDOW]
        mean = sum(window) / len(window) / 60
        n = max(1, math.ceil(k * mean / cap))
        for c in window:
            violations += max(0.0, c / 60 - n * cap) * 60
            cost += n * 60
    return violations, cost


def main():
    args = sys.argv[1:]
    cold = 30
    if args[:1] == ["--cold-start"]:
        cold, args = int(args[1]), args[2:]
    print("| trace | headroom k | violations % | vs HPA (viol, cost) | cost / oracle |")
    print("|---|---|---|---|---|")
    for t in args or DEFAULT:
        path = os.path.join(bench.TRACES, t)
        counts = on_grid(path)
        cap = bench.capacity(path)
        hpa, oracle = replay(path, cap, cold, "hpa"), replay(path, cap, cold, "oracle")
        total = sum(counts)
        print(f"| {t} | HPA, {cold} s cold start | {100 * hpa['slo_violation_ratio']:.3f} | 1.00, 1.00 "
              f"| {hpa['instance_seconds'] / oracle['instance_seconds']:.2f} |")
        for k in HEADROOM:
            v, c = clairvoyant(counts, cap, k)
            print(f"| {t} | {k:.1f} | {100 * v / total:.3f} "
                  f"| {v / max(hpa['slo_violations'], 1e-9):.2f}, {c / hpa['instance_seconds']:.2f} "
                  f"| {c / oracle['instance_seconds']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
