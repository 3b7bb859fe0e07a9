#!/usr/bin/env python3
"""System calls, context switches and CPU per request of each proxy in a setup of bench.py.

    python3 proxy/bench/syscalls.py --no-build                        # the three mTLS chains
    python3 proxy/bench/syscalls.py --no-build --only trellis-chain --requests 20000

For each setup (bench.py's, default trellis-chain, envoy-chain and nginx-chain) it starts the
proxies and the app as bench.py does (one worker each, pinned to CPU 1; the load on CPU 0),
warms up for 2 s, then counts, with `perf stat -p PID` on each proxy process, the system calls
(`syscalls:sys_enter_*` tracepoints, and `raw_syscalls:sys_enter` for all of them) and the
context switches while oha sends a fixed number of requests at a fixed rate (default 10000 at
1000 rps, 32 connections), and reads each process's user and system CPU time from /proc
around it (and, exactly, its threads' time on a CPU, their waits and their preemptions).
Everything is printed per request: counts do not depend on the machine's load the
way wall-clock figures do (though a busy machine can split or merge a few reads and wake-ups).

Needs what bench.py needs, and `perf` with access to the syscall tracepoints (root, or
kernel.perf_event_paranoid <= -1). Exit 2 when it cannot measure.
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ left in the tree by importing bench.py
import bench  # noqa: E402

# The system calls a proxy makes per request, named as their tracepoints; the rest are
# counted in "other" (raw_syscalls:sys_enter minus these).
SYSCALLS = [
    "read", "readv", "recvfrom", "recvmsg", "write", "writev", "sendto", "sendmsg",
    "epoll_wait", "epoll_pwait", "epoll_pwait2", "epoll_ctl", "poll", "ppoll", "select",
    "futex", "sched_yield", "nanosleep", "clock_nanosleep", "getrandom", "clock_gettime",
    "accept4", "close", "shutdown", "setsockopt", "getsockopt", "getsockname", "ioctl",
    "mmap", "munmap", "madvise", "mprotect", "brk", "timerfd_settime", "eventfd2", "fcntl",
]
# Per process: the role of each of a setup's measured processes, in the order bench.py starts them.
ROLES = {"hop": ["proxy"], "tlsorig": ["proxy"], "chain": ["inbound", "outbound"], "h2chain": ["inbound", "outbound"]}


def cpu_ticks(pid):
    """(user, system) CPU time of a process, in seconds (the kernel splits its exact run time
    between the two by where its timer ticks found the process)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def scheduling(pid):
    """Summed over a process's threads: nanoseconds on a CPU (schedstat, exact), and the
    voluntary (waits) and involuntary (preemptions) context switches."""
    on_cpu = voluntary = involuntary = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                on_cpu += int(f.read().split()[0])
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        voluntary += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        involuntary += int(line.split()[1])
        except FileNotFoundError:
            pass  # a thread that ended meanwhile
    return on_cpu, voluntary, involuntary


def perf_stat(pid, out):
    events = ["raw_syscalls:sys_enter", "context-switches", "cpu-migrations"]
    events += [f"syscalls:sys_enter_{s}" for s in SYSCALLS]
    return subprocess.Popen(
        ["perf", "stat", "-x", ",", "-o", out, "-e", ",".join(events), "-p", str(pid)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def parse_perf(path):
    """{event: count} from `perf stat -x ,` output."""
    counts = {}
    with open(path) as f:
        for line in f:
            parts = line.strip().split(",")
            if len(parts) < 3 or line.startswith("#"):
                continue
            try:
                value = float(parts[0])
            except ValueError:
                continue  # "<not counted>" / "<not supported>"
            name = parts[2].replace("syscalls:sys_enter_", "").replace("raw_syscalls:sys_enter", "all syscalls")
            counts[name] = value
    return counts


def measure(setup, roles, port, requests, rate, h2, dir):
    bench.oha(port, ["-z", "2s", "-q", str(rate), *bench.concurrency(32, h2)], h2)  # warm up
    procs = [p.pid for p in setup.procs]
    outs = [os.path.join(dir, f"perf-{setup.name}-{i}.csv") for i in range(len(procs))]
    stats = [perf_stat(pid, out) for pid, out in zip(procs, outs)]
    time.sleep(0.5)  # perf attaches
    for s in stats:
        if s.poll() is not None:
            sys.stderr.write(s.stderr.read())
            sys.exit(2)
    cpu0 = [cpu_ticks(p) for p in procs]
    sched0 = [scheduling(p) for p in procs]
    r = bench.oha(port, ["-n", str(requests), "-q", str(rate), *bench.concurrency(32, h2)], h2)
    cpu1 = [cpu_ticks(p) for p in procs]
    sched1 = [scheduling(p) for p in procs]
    for s in stats:
        s.send_signal(signal.SIGINT)
    for s in stats:
        s.wait(timeout=10)
    done = sum(r.get("statusCodeDistribution", {}).values())
    failed = bench.failures(r)
    rows = {}
    for role, out, (u0, s0), (u1, s1), a, b in zip(roles, outs, cpu0, cpu1, sched0, sched1):
        counts = parse_perf(out)
        named = sum(counts.get(s, 0) for s in SYSCALLS)
        counts["other"] = counts.get("all syscalls", 0) - named
        per = {k: v / done for k, v in counts.items()}
        per["on CPU us"] = (b[0] - a[0]) / 1e3 / done
        per["user us"] = (u1 - u0) * 1e6 / done
        per["system us"] = (s1 - s0) * 1e6 / done
        per["waits"] = (b[1] - a[1]) / done
        per["preempted"] = (b[2] - a[2]) / done
        rows[role] = per
    if len(rows) > 1:
        rows["both"] = {k: sum(r.get(k, 0) for r in list(rows.values())) for k in set().union(*rows.values())}
    return rows, done, failed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=list(bench.SETUPS), default=["trellis-chain", "envoy-chain", "nginx-chain"])
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    if subprocess.run(["perf", "stat", "-e", "raw_syscalls:sys_enter", "true"], capture_output=True).returncode:
        sys.exit(2)
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "trellis-proxy"], cwd=bench.ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(bench.ROOT, "target"))
    binary = os.path.join(target, "release", "trellis-proxy")
    results = {}
    with tempfile.TemporaryDirectory() as dir:
        bench.pki(dir)
        for name in args.only:
            kind, shape, app_proto = bench.SETUPS[name]
            if kind == "direct":
                continue
            h2 = app_proto == "h2"
            setup = bench.Setup(name)
            try:
                app = bench.start_app(setup, dir, app_proto)
                port = {
                    "trellis": lambda: bench.trellis(setup, binary, dir, app, shape),
                    "envoy": lambda: bench.envoy(setup, dir, app, shape),
                    "nginx": lambda: bench.nginx_proxy(setup, dir, app, shape),
                }[kind]()
                rows, done, failed = measure(setup, ROLES[shape], port, args.requests, args.rate, h2, dir)
                results[name] = rows
                print(f"{name}: {done} requests, {failed} failed", file=sys.stderr)
            finally:
                setup.stop()

    print(f"\nper request, {args.requests} requests at {args.rate} rps over 32 connections "
          f"(HTTP/2: 4 connections x 8 streams)\n")
    columns = [(n, role) for n in results for role in results[n]]
    keys = ["all syscalls"] + SYSCALLS + ["other", "context-switches", "waits", "preempted", "cpu-migrations",
                                          "on CPU us", "user us", "system us"]
    shown = [k for k in keys if any(results[n][role].get(k, 0) >= 0.005 for n, role in columns)]
    print("| per request | " + " | ".join(f"{n} {role}" for n, role in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for k in shown:
        print(f"| {k} | " + " | ".join(f"{results[n][role].get(k, 0):.2f}" for n, role in columns) + " |")


if __name__ == "__main__":
    main()
