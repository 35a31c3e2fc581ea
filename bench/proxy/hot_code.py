"""Writes link/hot.order: the functions a proxy executes to start and serve its first
HTTP/1.1 and h2c requests, which the release link places together at the front of the
binary's text (lld's --symbol-ordering-file; see build.rs and link/cc-ordered).

Why: the binary holds the control plane too (22 MiB of code), and the kernel maps code
64 KiB at a time around each page executed (fault-around) and reads ahead around each
miss. The ~3 MiB a proxy runs is spread over the whole text, so an idle proxy held 8.7 to
9.5 MiB of code pages; packed together they are about the size of what runs.

How: with read-ahead off for the binary's disk and its pages evicted from the page cache,
a fault reads and maps only pages executed (plus already-cached neighbours, which are
themselves executed ones), so the text pages present in /proc/PID/pagemap of a warm
proxy are the pages it ran. Their functions (from `nm`) are written in address order,
the one-line proxy's first, then what the config-file proxy adds, then what a sidecar
(the same proxy connected to a control plane) adds, then what TLS termination adds.
ThinLTO's `NAME.llvm.<hash>` names change between builds: they are written
`NAME.llvm.*`, which link/cc-ordered expands to the current build's at link time.

usage (root: it sets the disk's read_ahead_kb and restores it):
    cargo build --release --bin presage && python3 bench/proxy/hot_code.py [BINARY]
Then rebuild; bench/proxy/bench.py shows the warm RSS. A list measured on a build that
already uses one is tighter: whole functions on the pages executed include neighbours
that never ran, and packed together the hot ones are mostly each other's neighbours
(the standalone proxy's: 4.0 MiB of functions from a build without a list, then 3.3,
then 3.2).
"""

import bisect
import http.server
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time

from bench import free_port, self_signed, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# PRESAGE_HOT_ORDER=FILE writes another list (build.rs links with the same variable's):
# scripts/pgo.sh measures the profile-guided build's own, which inlines differently.
OUT = os.environ.get("PRESAGE_HOT_ORDER") or os.path.join(ROOT, "link", "hot.order")
PAGE = 4096


def read_ahead_file(path):
    """The sysfs read_ahead_kb of the disk `path` is on (a partition's is its disk's)."""
    dev = os.stat(path).st_dev
    base = f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}"
    for q in (f"{base}/queue/read_ahead_kb", f"{base}/../queue/read_ahead_kb"):
        if os.path.exists(q):
            return q
    sys.exit(f"no read_ahead_kb for the disk of {path} (overlay or tmpfs?): run on a real disk")


def evict(path):
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)


def text_pages(pid, exe):
    """File offsets of the executable mapping's pages present in `pid`."""
    out = set()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pm:
        for line in maps:
            f = line.split()
            if len(f) < 6 or f[5] != exe or f[1] != "r-xp":
                continue
            lo, hi = (int(x, 16) for x in f[0].split("-"))
            pm.seek(lo // PAGE * 8)
            data = pm.read((hi - lo) // PAGE * 8)
            for i in range(len(data) // 8):
                if struct.unpack_from("<Q", data, i * 8)[0] >> 63:
                    out.add(int(f[2], 16) + i * PAGE)
    return out


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def run(exe, args, urls, settle=0.2, read=text_pages):
    """`read(pid, exe)` (by default the pages executed) of a proxy started with `args`,
    its binary evicted from the page cache first, once it has served one HTTP/1.1 and
    one HTTP/2 request on each of `urls` (`http://` h2c, `https://` ALPN h2) and
    `settle` seconds more."""
    evict(exe)
    proc = subprocess.Popen([exe] + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for url in urls:
            wait_port(int(url.rsplit(":", 1)[1].rstrip("/")))
            h2 = "--http2" if url.startswith("https") else "--http2-prior-knowledge"
            for flag in ("--http1.1", h2):
                subprocess.run(["curl", "-sfk", "-o", "/dev/null", flag, url], check=True)
        time.sleep(settle)
        return read(proc.pid, exe)
    finally:
        proc.terminate()
        proc.wait()


def functions(exe):
    """(start, size, name) of the binary's functions, by address; and the executable
    segment's (file offset, address)."""
    syms = []
    nm = subprocess.run(["nm", "-S", "--defined-only", exe], capture_output=True, text=True, check=True)
    for line in nm.stdout.splitlines():
        f = line.split()
        if len(f) == 4 and f[2] in "tTwW":
            syms.append((int(f[0], 16), int(f[1], 16), f[3]))
    syms.sort()
    elf = subprocess.run(["readelf", "-lW", exe], capture_output=True, text=True, check=True)
    seg = next(l.split() for l in elf.stdout.splitlines() if l.split()[:1] == ["LOAD"] and " R E " in l)
    return syms, (int(seg[1], 16), int(seg[2], 16))


def listed(name):
    """`name` as the list has it: ThinLTO's NAME.llvm.HASH differs from build to build,
    so NAME.llvm.*, which link/cc-ordered expands to the build's own."""
    return re.sub(r"\.llvm\.\d+$", ".llvm.*", name)


def names_on(pages, syms, seg):
    """The functions on the text pages at file offsets `pages`, by address."""
    starts = [s[0] for s in syms]
    off0, addr0 = seg
    found = {}
    for off in pages:
        lo = off - (off0 & ~(PAGE - 1)) + (addr0 & ~(PAGE - 1))
        i = max(bisect.bisect_right(starts, lo) - 1, 0)
        while i < len(syms) and syms[i][0] < lo + PAGE:
            a, size, name = syms[i]
            if a + max(size, 1) > lo:
                found[name] = a
            i += 1
    return sorted(found, key=found.get)


def upstream():
    """A plain HTTP/1.1 upstream in this process (not the presage binary: its pages
    would be the proxy's); its `host:port`."""
    up = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=up.serve_forever, daemon=True).start()
    return f"127.0.0.1:{up.server_address[1]}"


def modes(exe, upstream, tmp):
    """`(label, args, urls, settle)` of each way a proxy runs: one-line, from a config
    file with an HTTP/1.1 and an h2c listener, as a sidecar (the same config with a
    control plane's streams and load reports), and terminating TLS. The control plane
    runs from a copy of the binary, so that the pages it reads are not in the proxy's
    page cache."""
    p = free_port()
    yield "one-line proxy", ["proxy", "--listen", f"127.0.0.1:{p}", "--to", f"http://{upstream}"], [f"http://127.0.0.1:{p}/"], 0.2
    p1, p2 = free_port(), free_port()
    urls = [f"http://127.0.0.1:{p1}/", f"http://127.0.0.1:{p2}/"]
    config = f"""listeners:
  - {{ name: h1, address: "127.0.0.1:{p1}" }}
  - {{ name: h2, address: "127.0.0.1:{p2}" }}
runtime: {{ workers: 1 }}
routes: [{{ cluster: up }}]
clusters: [{{ name: up, endpoints: [{{ address: "{upstream}" }}] }}]
"""
    path = os.path.join(tmp, "proxy.yaml")
    open(path, "w").write(config)
    yield "config file", ["proxy", "--config", path], urls, 0.2
    cp_exe = os.path.join(tmp, "presage-control-plane")
    shutil.copy(exe, cp_exe)
    grpc = free_port()
    cp = subprocess.Popen([cp_exe, "control-plane", "--grpc", f"127.0.0.1:{grpc}", "--api", f"127.0.0.1:{free_port()}",
                           "--store", os.path.join(tmp, "cp.redb")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(grpc)
        open(path, "w").write(config + f"control_plane: {{ address: \"http://127.0.0.1:{grpc}\", node_id: proxy-1, report_interval: 100ms }}\n")
        yield "sidecar", ["proxy", "--config", path], urls, 0.5
    finally:
        cp.terminate()
        cp.wait()
    self_signed(tmp)
    pt = free_port()
    open(path, "w").write(config.replace("listeners:\n", f"""listeners:
  - {{ name: tls, address: "127.0.0.1:{pt}", tls: {{ cert: cert.pem, key: key.pem }} }}
"""))
    yield "TLS", ["proxy", "--config", path], [f"https://127.0.0.1:{pt}/"], 0.2


def main():
    exe = os.path.realpath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/release/presage"))
    if os.geteuid() != 0:
        sys.exit("needs root: it turns the disk's read-ahead off while it measures")
    ra = read_ahead_file(exe)
    saved = open(ra).read().strip()
    stages = []
    try:
        open(ra, "w").write("0")
        with tempfile.TemporaryDirectory() as tmp:
            for label, args, urls, settle in modes(exe, upstream(), tmp):
                stages.append((label, run(exe, args, urls, settle)))
    finally:
        open(ra, "w").write(saved)
    syms, seg = functions(exe)
    # Each stage's functions after the earlier stages': the common path stays packed.
    names, seen, report = [], set(), []
    for label, pages in stages:
        new = [listed(n) for n in names_on(pages, syms, seg)]
        new = [n for n in dict.fromkeys(new) if n not in seen]
        seen.update(new)
        names += new
        report.append(f"{label}: {len(pages)} pages, +{len(new)} functions")
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        f.write("".join(n + "\n" for n in names))
    size = sum(s for _, s, n in syms if listed(n) in seen)
    print("; ".join(report))
    print(f"{len(names)} functions, {size / 1048576:.2f} MiB, written to {OUT}")


if __name__ == "__main__":
    main()
