# A/B of two presage binaries as reverse proxies (same nginx upstream, same CPUs), for
# checking a request-path change: python3 bench/proxy/ab.py OLD_BIN NEW_BIN [ROUNDS] (default 3,
# interleaved; medians).
import os, re, statistics, subprocess, sys, tempfile, time, socket
def free():
    s=socket.socket(); s.bind(("127.0.0.1",0)); p=s.getsockname()[1]; s.close(); return p
def wait(p):
    for _ in range(100):
        try: socket.create_connection(("127.0.0.1",p),0.2).close(); return
        except OSError: time.sleep(0.1)
tmp=tempfile.mkdtemp()
up=free()
open(f"{tmp}/up.conf","w").write(f"""worker_processes 1; daemon off; pid {tmp}/up.pid; error_log stderr error;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 1000000; keepalive_timeout 300s; default_type text/plain;
  server {{ listen 127.0.0.1:{up}; location / {{ return 200 "{'x'*1024}"; }} }} }}""")
procs=[subprocess.Popen(["taskset","-c","1","nginx","-c",f"{tmp}/up.conf"])]
wait(up)
ports={}
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
    wait(p1); wait(p2); ports[name]=(p1,p2)
res={"old":{"h1":[],"h2":[]},"new":{"h1":[],"h2":[]}}
for r in range(int(sys.argv[3]) if len(sys.argv) > 3 else 3):
    for name in (["old","new"] if r%2==0 else ["new","old"]):
        p1,p2=ports[name]
        out=subprocess.run(["taskset","-c","0","wrk","-t1","-c64","-d6s",f"http://127.0.0.1:{p1}/"],capture_output=True,text=True).stdout
        res[name]["h1"].append(float(re.search(r"Requests/sec:\s+([\d.]+)",out).group(1)))
        out=subprocess.run(["taskset","-c","0","h2load","-c64","-m10","-t1","-D","6",f"http://127.0.0.1:{p2}/"],capture_output=True,text=True).stdout
        res[name]["h2"].append(float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s",out).group(1)))
for p in procs: p.terminate(); p.wait()
for name in res:
    for proto in res[name]:
        v=sorted(res[name][proto]); print(name,proto,"median",statistics.median(v),"all",v)
