#!/usr/bin/env python3
"""A trellis-proxy's RSS holding a compiled sidecar config (the convergence benchmark's
`CONFIG_OUT`): the outbound listener (with every cluster and the DNS table) on a loopback port,
the workload identity from IDENTITY_DIR (cert-chain.pem, key.pem, root-certs.pem for the
config's SPIFFE ID); VmRSS and VmHWM 10 s after the config applied, and VmRSS split into
RssAnon (the heap: what the proxy holds, and what the allocator keeps) and RssFile (the
binary's pages, shared by every proxy of a node that runs the same image).

With `idle` in place of the config: the same figures for a proxy holding one route to one
cluster (issue 14's idle figure; the config is written next to the binary's log in /tmp).

Usage: proxy_rss.py TRELLIS_PROXY_BINARY CONFIG.json|idle  (see operator/benches/README.md)"""
import json, os, subprocess, sys, time, urllib.request, socket

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

proxy, src = sys.argv[1], sys.argv[2]
if src == "idle":
    src = "/tmp/proxy-rss-idle.json"
    route = {"action": {"forward": {"clusters": [{"cluster": "app"}]}},
             "provenance": {"kind": "Service", "namespace": "ns", "name": "app"}}
    cfg = {"version": "idle", "node": {"workload": "w", "namespace": "ns", "app": "w", "version": "v1"},
           "listeners": [{"name": "outbound", "address": "", "direction": "outbound", "protocol": "http",
                          "virtualHosts": [{"name": "app", "domains": ["*"], "routes": [route]}]}],
           "clusters": [{"name": "app", "endpoints": [{"address": "127.0.0.1", "port": free_port()}]}]}
    json.dump(cfg, open(src, "w"))
else:
    cfg = json.load(open(src))
    cfg["listeners"] = [l for l in cfg["listeners"] if l["name"] == "outbound"]
    # The workload identity from files made for the measurement (a root and a leaf for the
    # SPIFFE ID), in place of the pod's.
    ident = os.environ.get("IDENTITY_DIR", "/var/tmp/sidecar-rss-id")
    cfg["identity"]["certificate"] = {"files": {"certChainFile": f"{ident}/cert-chain.pem", "privateKeyFile": f"{ident}/key.pem"}}
    cfg["identity"]["trustBundle"] = {"file": f"{ident}/root-certs.pem"}
cfg["listeners"][0]["address"] = f"127.0.0.1:{free_port()}"
out = src + ".rss.json"
json.dump(cfg, open(out, "w"))
admin = free_port()
args = [proxy, "run", "--config", out, "--admin-addr", f"127.0.0.1:{admin}",
        "--stats-addr", f"127.0.0.1:{free_port()}", "--health-addr", f"127.0.0.1:{free_port()}",
        "--dns-addr", f"127.0.0.1:{free_port()}"]
p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(src + ".log", "w"))
try:
    version = None
    for _ in range(300):
        time.sleep(0.2)
        try:
            dump = json.load(urllib.request.urlopen(f"http://127.0.0.1:{admin}/config_dump", timeout=2))
            version = dump.get("version") or dump.get("config", {}).get("version")
            if version and version != "none":
                break
        except Exception:
            pass
    time.sleep(10)
    rss = [l for l in open(f"/proc/{p.pid}/status") if l.startswith(("VmRSS", "VmHWM", "RssAnon", "RssFile"))]
    print(f"{os.path.basename(src)}: config {os.path.getsize(src)/1024:.0f} KiB, applied version {version!r}, " + ", ".join(x.split()[0] + " " + f"{int(x.split()[1])/1024:.1f} MiB" for x in rss))
finally:
    p.terminate(); p.wait()
