#!/usr/bin/env python3
"""Build the profile-guided (PGO) release trellis-proxy.

One command, from the repository root:

    python3 proxy/bench/pgo.py          # prints the path of the built binary

Three steps, as rustc's PGO guide describes them:
1. `cargo build --release -p trellis-proxy` instrumented (`-Cprofile-generate`), in its own
   target directory (`$CARGO_TARGET_DIR/pgo-generate`, so the plain release build's cache is
   left alone);
2. training: the instrumented proxy serves the setups of the sidecar benchmark (bench.py next
   to this file: one hop, the mTLS sidecar chain, the HTTP/2 chain over mTLS, TLS origination)
   with nginx as the app — GETs and 4 KiB POSTs, closed-loop and at a fixed rate — and exits on
   SIGTERM, writing its profile; `llvm-profdata merge` makes one profile of them;
3. `cargo build --release -p trellis-proxy` with `-Cprofile-use` of that profile, in
   `$CARGO_TARGET_DIR/pgo` (the binary: `$CARGO_TARGET_DIR/pgo/<host triple>/release/trellis-proxy`).

Measure it with `python3 proxy/bench/bench.py --proxy <that path>` (proxy/bench/README.md has
both builds' figures). Needs what bench.py needs for the app and the load (nginx, oha,
openssl, taskset; not Envoy) and `llvm-profdata` of rustc's LLVM version (Debian: `apt-get
install llvm-22` for rustc's LLVM 22; or `rustup component add llvm-tools`). Takes two
release builds: about 15 minutes each on 2 cores.
"""

import argparse
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the setups and the load generator are the benchmark's)

ROOT = bench.ROOT
POST_BODY = "y" * 4096


def rustc_facts():
    """rustc's host triple and LLVM major version."""
    out = subprocess.run(["rustc", "-vV"], check=True, capture_output=True, text=True).stdout
    host = re.search(r"^host: (\S+)", out, re.M)
    llvm = re.search(r"^LLVM version: (\d+)", out, re.M)
    if not host or not llvm:
        sys.exit("cannot tell rustc's host and LLVM version from `rustc -vV`")
    return host.group(1), llvm.group(1)


def llvm_profdata(host, major):
    """An llvm-profdata of LLVM `major` (a profile is read by the LLVM that wrote its format)."""
    sysroot = subprocess.run(["rustc", "--print", "sysroot"], check=True, capture_output=True, text=True).stdout.strip()
    candidates = [shutil.which(f"llvm-profdata-{major}"), f"/usr/lib/llvm-{major}/bin/llvm-profdata",
                  os.path.join(sysroot, "lib", "rustlib", host, "bin", "llvm-profdata"), shutil.which("llvm-profdata")]
    for c in candidates:
        if not c or not os.path.exists(c):
            continue
        version = subprocess.run([c, "--version"], capture_output=True, text=True).stdout
        if re.search(rf"LLVM version {major}\.", version):
            return c
    sys.exit(f"missing llvm-profdata for LLVM {major} (rustc's): `apt-get install llvm-{major}` (Debian), "
             f"or `rustup component add llvm-tools`")


def cargo_build(target_dir, host, rustflags):
    """The release proxy built with `rustflags`. why `--target`: with it RUSTFLAGS apply to the
    proxy and its libraries only, not to build scripts and proc macros (which, instrumented,
    would write profiles of their own while building)."""
    env = dict(os.environ, CARGO_TARGET_DIR=target_dir, RUSTFLAGS=rustflags)
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "trellis-proxy", "--target", host],
                   cwd=ROOT, env=env, check=True)
    return os.path.join(target_dir, host, "release", "trellis-proxy")


def train(binary):
    """Serve each benchmark setup with the instrumented proxy; every proxy must exit on SIGTERM
    (a proxy killed writes no profile)."""
    with tempfile.TemporaryDirectory() as dir:
        bench.pki(dir)
        for name in ["trellis-hop", "trellis-chain", "trellis-h2chain", "trellis-tlsorig"]:
            kind, shape, app_proto = bench.SETUPS[name]
            h2 = app_proto == "h2"
            setup = bench.Setup(name)
            try:
                app = bench.start_app(setup, dir, app_proto)
                port = bench.trellis(setup, binary, dir, app, shape)
                for load in (["-z", "3s", *bench.concurrency(16, h2)],
                             ["-z", "2s", "-m", "POST", "-d", POST_BODY, *bench.concurrency(8, h2)],
                             ["-z", "2s", "-q", "500", *bench.concurrency(32, h2)]):
                    r = bench.oha(port, load, h2)
                    failed, total = bench.failures(r), sum(r.get("statusCodeDistribution", {}).values())
                    # A broken setup fails (nearly) every request; a few failures are the proxy's
                    # to fix, but the profile of the paths trained is still sound.
                    if failed > total * 0.05:
                        sys.exit(f"{name}: {failed} of {total} requests failed while training ({' '.join(load)})")
                    if failed:
                        print(f"warning: {name}: {failed} of {total} requests failed while training "
                              f"({' '.join(a for a in load if len(a) < 100)}): {r.get('statusCodeDistribution')}",
                              flush=True)
                print(f"trained on {name}", flush=True)
            finally:
                for p in setup.procs + setup.others:
                    if p.poll() is None:
                        p.send_signal(signal.SIGTERM)
                for p in setup.others:
                    p.wait(timeout=30)
                for p in setup.procs:
                    try:
                        code = p.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        sys.exit(f"{name}: the proxy did not exit within 60 s of SIGTERM; its profile is lost")
                    if code != 0:
                        sys.exit(f"{name}: the proxy exited with {code}; its profile may be incomplete")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.parse_args()
    for tool in ["oha", "nginx", "openssl", "taskset", "cargo", "rustc"]:
        if not shutil.which(tool):
            sys.exit(f"missing {tool}: see proxy/bench/README.md for how to install it")
    host, major = rustc_facts()
    profdata_tool = llvm_profdata(host, major)
    base = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    profiles = os.path.join(base, "pgo-profiles")
    shutil.rmtree(profiles, ignore_errors=True)
    os.makedirs(profiles)
    instrumented = cargo_build(os.path.join(base, "pgo-generate"), host, f"-Cprofile-generate={profiles}")
    train(instrumented)
    raw = glob.glob(os.path.join(profiles, "*.profraw"))
    if not raw:
        sys.exit(f"training wrote no profile in {profiles}")
    merged = os.path.join(profiles, "trellis-proxy.profdata")
    subprocess.run([profdata_tool, "merge", "-o", merged, *raw], check=True)
    binary = cargo_build(os.path.join(base, "pgo"), host, f"-Cprofile-use={merged}")
    print(binary)


if __name__ == "__main__":
    main()
