#!/usr/bin/env python3
"""Instruction-count regression check for trellis-proxy (valgrind callgrind).

Wall-clock benchmarks are noisy on shared CI machines; the number of
instructions the proxy executes per request is not. This script runs the
release proxy under `valgrind --tool=callgrind` as one plain HTTP/1.1 hop in
front of a small loopback app (1 KiB responses), warms it up, zeroes the
counters (`callgrind_control --zero`), sends N keep-alive requests over a few
connections, dumps the counters (`callgrind_control --dump`) and divides the
instructions executed (Ir, all threads) by N. The result is compared with the
committed baseline (`callgrind-baseline.json` next to this file); the check
fails when it is more than `--threshold` percent (default 10) above it.

    python3 proxy/bench/callgrind.py                 # build --release, measure, compare
    python3 proxy/bench/callgrind.py --update        # measure and rewrite the baseline
    python3 proxy/bench/callgrind.py --no-build      # use the existing release binary
    python3 proxy/bench/callgrind.py --no-build --keep-dump /tmp/cg.out   # then: callgrind_annotate /tmp/cg.out
    python3 proxy/bench/callgrind.py --no-build --chain   # the mTLS sidecar chain, each proxy (not compared)

With --chain the client talks to an outbound proxy that forwards over mesh mTLS to an inbound
proxy (STRICT) in front of the app, both under callgrind: the chain issue 14's CPU target is
about, TLS records and the inbound side's work (peer metadata, XFCC) included. It prints each
proxy's instructions per request and compares nothing (needs openssl for the certificates).

Exit status: 0 within the threshold (or baseline updated), 1 on a regression,
2 when it cannot measure (valgrind missing, proxy failed to start, ...).
Needs valgrind (Debian `valgrind`, which ships callgrind_control).
"""

import argparse
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASELINE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "callgrind-baseline.json")
BODY = b"x" * 1024
# The proxy's own workload and the endpoint's, as the operator sends them: each request's metric
# labels name both sides (the Istio label set), as they do in a mesh.
NODE = {
    "id": "web-5d9f8b7c6-x2k4q.shop",
    "workload": "web",
    "namespace": "shop",
    "app": "web",
    "version": "v1",
    "serviceAccount": "web",
    "cluster": "Kubernetes",
}
ENDPOINT_LABELS = {"app": "app", "version": "v1", "workload": "app-v1", "namespace": "bench"}
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n%s" % (len(BODY), BODY)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def serve_app(listener):
    """A minimal keep-alive HTTP/1.1 app: one fixed 1 KiB response per request head."""

    def conn(c):
        buf = b""
        with c:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = c.recv(65536)
                    if not data:
                        return
                    buf += data
                _, buf = buf.split(b"\r\n\r\n", 1)
                c.sendall(RESPONSE)

    while True:
        try:
            c, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=conn, args=(c,), daemon=True).start()


def read_response(s, buf):
    """Read one response with a Content-Length body from socket `s`; returns the leftover bytes."""
    while b"\r\n\r\n" not in buf:
        data = s.recv(65536)
        if not data:
            raise RuntimeError("proxy closed the connection")
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    status = head.split(b" ", 2)[1]
    if status != b"200":
        raise RuntimeError(f"proxy answered {status.decode()}: {head.decode(errors='replace')}")
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        data = s.recv(65536)
        if not data:
            raise RuntimeError("proxy closed the connection mid-body")
        rest += data
    return rest[length:]


def load(port, requests, connections):
    """Send `requests` GETs spread over `connections` keep-alive connections, one at a time each."""
    per = [requests // connections + (1 if i < requests % connections else 0) for i in range(connections)]
    errors = []

    def client(n):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
                buf = b""
                for _ in range(n):
                    s.sendall(b"GET /bench HTTP/1.1\r\nhost: app\r\n\r\n")
                    buf = read_response(s, buf)
        except Exception as e:  # reported below, with the others
            errors.append(e)

    threads = [threading.Thread(target=client, args=(n,)) for n in per]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"load failed: {errors[0]}")


def wait_ready(port, proc, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the proxy exited with {proc.returncode} under valgrind")
        try:
            load(port, 1, 1)
            return
        except (OSError, RuntimeError):
            time.sleep(0.2)
    raise RuntimeError(f"the proxy did not serve within {timeout} s under valgrind")


def callgrind_control(flag, pid):
    subprocess.run(["callgrind_control", flag, str(pid)], check=True, capture_output=True, text=True, timeout=60)


def dumped_instructions(out_prefix):
    """Sum the Ir totals of every dump file written after the zeroing (one per thread)."""
    total = 0
    files = [f for f in glob.glob(out_prefix + "*") if not f.endswith(".0")]
    for path in files:
        with open(path) as f:
            for line in f:
                if line.startswith("summary:") or line.startswith("totals:"):
                    total += int(line.split()[1])
                    break
    return total, len(files)


def listener(name, port, direction, cluster):
    """A listener forwarding every request to `cluster`."""
    return {
        "name": name,
        "address": f"127.0.0.1:{port}",
        "direction": direction,
        "protocol": "http",
        "virtualHosts": [
            {
                "name": "app",
                "domains": ["*"],
                "routes": [
                    {
                        "action": {"forward": {"clusters": [{"cluster": cluster}]}},
                        "provenance": {"kind": "Service", "namespace": "bench", "name": "app"},
                    }
                ],
            }
        ],
    }


def app_cluster(app_port):
    return {
        "name": "app",
        "service": "app.bench.svc.cluster.local",
        "endpoints": [{"address": "127.0.0.1", "port": app_port, "labels": ENDPOINT_LABELS}],
    }


def hop_configs(dir, app_port, port):
    """One plain HTTP/1.1 hop: the proxy at `port` in front of the app."""
    return [
        {
            "version": "callgrind",
            "listeners": [listener("hop", port, "outbound", "app")],
            "clusters": [app_cluster(app_port)],
            # A sidecar's identity, so every request carries the full Istio label set.
            "node": NODE,
        }
    ]


def chain_configs(dir, app_port, port):
    """The mTLS sidecar chain: the client's proxy at `port` (outbound) sends over mesh mTLS
    (SPIFFE certificates, P-256, from bench.py's `pki`) to the server's proxy (inbound, STRICT),
    which forwards to the app; each proxy names its workload, so the inbound one believes the
    peer metadata the outbound one sends."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench import identity, pki

    pki(dir)

    def node(workload):
        return dict(NODE, id=f"{workload}-5d9f8b7c6-x2k4q.bench", workload=workload, namespace="bench",
                    app=workload, serviceAccount=workload)

    inbound = free_port()
    return [
        {
            "version": "callgrind",
            "identity": identity(dir, "payment"),
            "node": node("payment"),
            "listeners": [listener("in", inbound, "inbound", "app")],
            "clusters": [app_cluster(app_port)],
            "inbound": {"mtls": {"mode": "STRICT"}},
        },
        {
            "version": "callgrind",
            "identity": identity(dir, "web"),
            "node": node("web"),
            "listeners": [listener("out", port, "outbound", "payment")],
            "clusters": [
                {
                    "name": "payment",
                    "service": "payment.bench.svc.cluster.local",
                    "tls": {"mesh": {"expectedIdentities": ["spiffe://cluster.local/ns/bench/sa/payment"]}},
                    "endpoints": [
                        {
                            "address": "127.0.0.1",
                            "port": inbound,
                            "labels": {"app": "payment", "version": "v1", "workload": "payment", "namespace": "bench"},
                        }
                    ],
                }
            ],
        },
    ]


def measure(bin, requests, connections, chain=False, keep=None):
    """Instructions executed by each proxy (in the order the configs list them: for the chain,
    inbound then outbound) over `requests` requests, and the seconds the load took."""
    with tempfile.TemporaryDirectory() as dir:
        app = socket.socket()
        app.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        app.bind(("127.0.0.1", 0))
        app.listen(64)
        threading.Thread(target=serve_app, args=(app,), daemon=True).start()
        port = free_port()
        configs = (chain_configs if chain else hop_configs)(dir, app.getsockname()[1], port)
        procs = []
        try:
            for i, config in enumerate(configs):
                cfg = os.path.join(dir, f"proxy-{i}.json")
                with open(cfg, "w") as f:
                    json.dump(config, f)
                out_prefix = os.path.join(dir, f"callgrind-{i}.out")
                cmd = [
                    "valgrind",
                    "--tool=callgrind",
                    f"--callgrind-out-file={out_prefix}.%p",
                    "--dump-instr=no",
                    "--separate-threads=no",
                    bin,
                    "run",
                    "--config",
                    cfg,
                    "--admin-addr",
                    f"127.0.0.1:{free_port()}",
                    "--stats-addr",
                    f"127.0.0.1:{free_port()}",
                    "--health-addr",
                    f"127.0.0.1:{free_port()}",
                    "--dns-addr",
                    "off",
                ]
                env = dict(os.environ, TRELLIS_WORKERS="1", TRELLIS_LOG="warn")
                proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                procs.append((proc, out_prefix))
            # The last proxy is the one the client talks to: it serves once the chain does.
            wait_ready(port, procs[-1][0], timeout=60)
            load(port, max(50, requests // 10), connections)  # warm-up: pools, allocator, lazy statics
            for proc, _ in procs:
                callgrind_control("--zero", proc.pid)
            started = time.time()
            load(port, requests, connections)
            elapsed = time.time() - started
            counts = []
            for i, (proc, out_prefix) in enumerate(procs):
                for f in glob.glob(out_prefix + "*"):
                    os.rename(f, f + ".0")  # anything dumped before is not ours
                callgrind_control("--dump", proc.pid)
                instructions, files = dumped_instructions(out_prefix)
                if files == 0 or instructions == 0:
                    raise RuntimeError("callgrind wrote no dump after --dump")
                counts.append(instructions)
                if keep:
                    dumps = sorted(f for f in glob.glob(out_prefix + "*") if not f.endswith(".0"))
                    shutil.copyfile(dumps[-1], keep if len(procs) == 1 else f"{keep}.{i}")
        finally:
            for proc, _ in procs:
                proc.terminate()
            for proc, _ in procs:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            app.close()
        return counts, elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000, help="measured requests (default 2000)")
    ap.add_argument("--connections", type=int, default=4, help="keep-alive connections (default 4)")
    ap.add_argument("--threshold", type=float, default=10.0, help="allowed increase in percent (default 10)")
    ap.add_argument("--update", action="store_true", help="write the measurement as the new baseline")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build --release first")
    ap.add_argument("--keep-dump", metavar="FILE", help="copy the measured dump there, for callgrind_annotate FILE"
                    " (with --chain: FILE.0 the inbound proxy's, FILE.1 the outbound one's)")
    ap.add_argument("--chain", action="store_true", help="measure the mTLS sidecar chain (two proxies) instead of"
                    " the hop; printed, not compared with the baseline")
    args = ap.parse_args()
    for tool in ["valgrind", "callgrind_control"]:
        if not shutil.which(tool):
            print(f"callgrind check: {tool} not found (Debian: apt-get install valgrind)", file=sys.stderr)
            return 2
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "trellis-proxy"], cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    bin = os.path.join(target, "release", "trellis-proxy")
    try:
        counts, elapsed = measure(bin, args.requests, args.connections, args.chain, args.keep_dump)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        print(f"callgrind check: cannot measure: {e}", file=sys.stderr)
        return 2
    if args.chain:
        inbound, outbound = (n / args.requests for n in counts)
        print(
            f"trellis-proxy, the mTLS sidecar chain (HTTP/1.1), 1 KiB responses, {args.requests} requests over"
            f" {args.connections} connections, instructions per request: outbound proxy {outbound:.0f},"
            f" inbound proxy {inbound:.0f}, both {outbound + inbound:.0f} ({elapsed:.1f} s under callgrind)"
        )
        return 0
    instructions = counts[0]
    per_request = instructions / args.requests
    print(
        f"trellis-proxy, one HTTP/1.1 hop, 1 KiB responses: {instructions} instructions for {args.requests} requests"
        f" over {args.connections} connections = {per_request:.0f} per request ({elapsed:.1f} s under callgrind)"
    )
    if args.update:
        with open(BASELINE, "w") as f:
            json.dump(
                {
                    "instructions_per_request": round(per_request),
                    "requests": args.requests,
                    "connections": args.connections,
                    "measured": time.strftime("%Y-%m-%d"),
                    "command": "python3 proxy/bench/callgrind.py --update",
                },
                f,
                indent=2,
            )
            f.write("\n")
        print(f"baseline written to {os.path.relpath(BASELINE, ROOT)}")
        return 0
    with open(BASELINE) as f:
        baseline = json.load(f)["instructions_per_request"]
    change = (per_request - baseline) / baseline * 100
    print(f"baseline {baseline} per request: {change:+.1f} % (threshold +{args.threshold:.0f} %)")
    if change > args.threshold:
        print(
            "REGRESSION: the proxy executes more instructions per request than the baseline allows; profile with"
            " `callgrind_annotate` (see proxy/bench/README.md) or, if intended, run with --update",
            file=sys.stderr,
        )
        return 1
    if change < -args.threshold:
        print(f"the proxy got cheaper by {-change:.1f} %: consider --update to lock the gain in")
    return 0


if __name__ == "__main__":
    sys.exit(main())
