# A/B of two presage binaries as reverse proxies (same nginx upstream, same CPUs), for
# checking a request-path change: python3 bench/proxy/ab.py OLD_BIN NEW_BIN [ROUNDS] (default 3,
# interleaved; medians). Besides throughput it prints, per request, the proxy's CPU, how
# often it was preempted (its involuntary context switches: mostly the upstream, woken on
# the same core, taking the core over) and the upstream nginx worker's CPU.
import os, re, statistics, subprocess, sys, tempfile, time

from bench import cpu_seconds, free_port as free, upstream_conf, wait_port as wait

def preemptions(pid):
    return sum(int(re.search(r"nonvoluntary_ctxt_switches:\s+(\d+)",open(f"/proc/{pid}/task/{t}/status").read()).group(1))
               for t in os.listdir(f"/proc/{pid}/task"))
def sample(pid):
    """The proxy's CPU (us), its preemptions and the upstream worker's CPU (us), so far."""
    return cpu_seconds([pid])*1e6, preemptions(pid), cpu_seconds([worker])*1e6
tmp=tempfile.mkdtemp()
up=free()
procs=[subprocess.Popen(["taskset","-c","1","nginx","-c",upstream_conf(tmp,up)])]
wait(up)
time.sleep(0.3)  # let nginx fork its worker
worker=int(open(f"/proc/{procs[0].pid}/task/{procs[0].pid}/children").read().split()[0])
ports={}; pids={}
for name,binp in [("old",sys.argv[1]),("new",sys.argv[2])]:
    p1=free(); p2=free()
    open(f"{tmp}/{name}.yaml","w").write(f"""listeners:
  - {{ name: h1, address: "127.0.0.1:{p1}" }}
  - {{ name: h2, address: "127.0.0.1:{p2}" }}
runtime: {{ workers: 1 }}
routes: [{{ cluster: up }}]
clusters: [{{ name: up, endpoints: [{{ address: "127.0.0.1:{up}" }}] }}]
""")
    procs.append(subprocess.Popen(["taskset","-c","1",binp,"proxy","--config",f"{tmp}/{name}.yaml"],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL))
    wait(p1); wait(p2); ports[name]=(p1,p2); pids[name]=procs[-1].pid
LOAD={"h1":(["wrk","-t1","-c64","-d6s"],r"Requests/sec:\s+([\d.]+)",0),
      "h2":(["h2load","-c64","-m10","-t1","-D","6"],r"finished in [\d.]+\w+, ([\d.]+) req/s",1)}
res={(n,p):[] for n in ports for p in LOAD}
for r in range(int(sys.argv[3]) if len(sys.argv) > 3 else 3):
    for name in (["old","new"] if r%2==0 else ["new","old"]):
        for proto,(cmd,pattern,port) in LOAD.items():
            before=sample(pids[name])
            out=subprocess.run(["taskset","-c","0"]+cmd+[f"http://127.0.0.1:{ports[name][port]}/"],capture_output=True,text=True).stdout
            rps=float(re.search(pattern,out).group(1)); n=rps*6
            after=sample(pids[name])
            res[(name,proto)].append((rps,)+tuple((a-b)/n for a,b in zip(after,before)))
for p in procs: p.terminate(); p.wait()
for (name,proto),v in res.items():
    m=[statistics.median(x[i] for x in v) for i in range(4)]
    print(f"{name} {proto} median {m[0]:.0f} req/s, all {sorted(round(x[0]) for x in v)}; per request: "
          f"proxy {m[1]:.2f} us, preempted {m[2]:.3f} times, upstream {m[3]:.2f} us")
