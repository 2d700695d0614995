#!/usr/bin/env python3
"""Durable appends per second with 200 concurrent writers: sled (fsynced) against
PostgreSQL (committed), same binary, same load (BENCHMARKS.md, "Durable appends").

The client is `target/release/appends` (bench/src/bin/appends.rs): 200 writers, each
POSTing its own keystroke-sized updates to one of 20 rooms, the next only when the
previous is answered (durable). collabd runs on core SERVER_CPU (default 0), the client
on CLIENT_CPU (default 1). PostgreSQL is the machine's server (COLLABD_TEST_POSTGRES_URL,
default postgres://postgres@127.0.0.1:5432/postgres), on whatever cores it has: its CPU
competes with the client's.

Usage: cargo build --release --workspace && python3 bench/appends.py [SECONDS]
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.path.join(ROOT, "target/release/collabd")
CLIENT = os.path.join(ROOT, "target/release/appends")
WRITERS = 200
ROOMS = 20
ADMIN = os.environ.get("COLLABD_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")

def start(args):
    data = tempfile.mkdtemp(prefix="collabd-appends-")
    proc = subprocess.Popen(
        ["taskset", "-c", os.environ.get("SERVER_CPU", "0"), CLI, "--bind", "127.0.0.1:0",
         "--data-dir", os.path.join(data, "db"), "--http-rate-per-ip", "1000000",
         "--http-burst-per-ip", "1000000", *args],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        env={**os.environ, "RUST_LOG": "warn,collabd::server=info"})
    for line in proc.stderr:
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if m:
            return proc, int(m.group(1)), data
    raise SystemExit("server did not start")


def cpu_seconds(pid):
    """User + system CPU of `pid` (the server behind taskset), in seconds."""
    children = open(f"/proc/{pid}/task/{pid}/children").read().split()
    target = children[0] if children else pid
    fields = open(f"/proc/{target}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(port, seconds):
    out = subprocess.check_output(
        ["taskset", "-c", os.environ.get("CLIENT_CPU", "1"), CLIENT,
         "--url", f"http://127.0.0.1:{port}", "--writers", str(WRITERS),
         "--rooms", str(ROOMS), "--duration", str(seconds)])
    return json.loads(out)


def main():
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10
    db = f"collabd_bench_{os.getpid()}"
    subprocess.run(["psql", ADMIN, "-qc", f"create database {db}"], check=True)
    try:
        for label, args in [("sled (fsynced)", []),
                            ("PostgreSQL (committed)", ["--postgres-url", ADMIN.rsplit("/", 1)[0] + "/" + db])]:
            proc, port, data = start(args)
            cpu_before = cpu_seconds(proc.pid)
            report = run(port, seconds)
            cpu = cpu_seconds(proc.pid) - cpu_before
            rate = report["appends_per_sec"]
            assert report["failures"] == 0, report
            proc.terminate()
            proc.wait()
            shutil.rmtree(data, ignore_errors=True)
            print(f"| {label} | {rate:,.0f} | {report['latency_us_p50'] / 1000:.1f} ms | "
                  f"{report['latency_us_p99'] / 1000:.1f} ms | "
                  f"{cpu / report['appends'] * 1e6:.0f} µs |")
    finally:
        subprocess.run(["psql", ADMIN, "-qc", f"drop database if exists {db} with (force)"])


if __name__ == "__main__":
    main()
