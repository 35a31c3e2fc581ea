"""Idle RSS of proxies, each binary evicted from the page cache before each start (so
that what is mapped does not depend on what earlier runs left cached): a one-line proxy,
a proxy from a config file, a sidecar (the same with a control plane) and a proxy
terminating TLS, each after one HTTP/1.1 and one HTTP/2 request per listener. Medians of ROUNDS starts, binaries
interleaved.

usage: python3 bench/proxy/idle_rss.py [--rounds N] BINARY [BINARY ...]
"""

import statistics
import sys
import tempfile

from hot_code import modes, run, upstream


def vm_rss_mib(pid, _exe):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def main():
    args = sys.argv[1:]
    rounds = 3
    if args[:1] == ["--rounds"]:
        rounds, args = int(args[1]), args[2:]
    if not args:
        sys.exit(__doc__)
    up = upstream()
    rss = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            for exe in args:
                for label, argv, urls, settle in modes(exe, up, tmp):
                    rss.setdefault((label, exe), []).append(run(exe, argv, urls, settle, read=vm_rss_mib))
    print("| binary | " + " | ".join(dict.fromkeys(label for label, _ in rss)) + " |")
    print("|---" * (1 + len({label for label, _ in rss})) + "|")
    for exe in args:
        cells = [f"{statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})" for (label, e), v in rss.items() if e == exe]
        print(f"| {exe} | " + " | ".join(cells) + " |")
    print(f"\nMiB, median (range) of {rounds} starts each.")


if __name__ == "__main__":
    main()
