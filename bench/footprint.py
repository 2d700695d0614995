#!/usr/bin/env python3
"""The embedded footprint (BENCHMARKS.md, "Embedded footprint"), on release builds:

- binary sizes: the CLI (`collabd`) and an app that embeds the library without default
  features (`examples/embed`, built with --no-default-features), as built and stripped;
- time from exec to the first answered request (`GET /healthz`), median of 20 starts;
- idle RSS with 0 rooms and with 100 idle rooms loaded;
- the store's page cache: RSS after each of four rounds of 12,000 new small rooms
  (each loaded, written once, unloaded), with `store_cache_bytes` at its default
  (64 MiB), at sled's own default (1 GiB) and at 1 MiB.

Usage: cargo build --release && cargo build --release --no-default-features --example embed
       taskset -c 1 python3 bench/footprint.py     (prints Markdown rows; the server runs
       on core SERVER_CPU, default 0, the client here on core 1)
"""
import concurrent.futures
import http.client
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.path.join(ROOT, "target/release/collabd")
EMBED = os.path.join(ROOT, "target/release/examples/embed")
# A Yjs update v1: client 1 inserts "hello" into the Y.Text "t" (made with yjs 13.6:
# d.clientID = 1; d.getText('t').insert(0, 'hello'); Y.encodeStateAsUpdate(d)).
UPDATE = bytes.fromhex("01010100040101740568656c6c6f00")


def start(args, env=None):
    data = tempfile.mkdtemp(prefix="collabd-footprint-")
    began = time.monotonic()
    cpu = os.environ.get("SERVER_CPU", "0")
    proc = subprocess.Popen(
        ["taskset", "-c", cpu, CLI, "--bind", "127.0.0.1:0",
         "--data-dir", os.path.join(data, "db"), *args],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        env={**os.environ, "RUST_LOG": "warn,collabd::server=info", **(env or {})})
    port = None
    for line in proc.stderr:
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if m:
            port = int(m.group(1))
            break
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                break
        except OSError:
            time.sleep(0.0005)
    ready = time.monotonic() - began
    return proc, port, data, ready


def stop(proc, data):
    proc.terminate()
    proc.wait()
    shutil.rmtree(data, ignore_errors=True)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])


def post(port, room):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("POST", f"/rooms/{room}/updates", body=UPDATE,
              headers={"content-type": "application/octet-stream"})
    r = c.getresponse()
    r.read()
    assert r.status == 200, (room, r.status)


def write_rooms(port, n, prefix):
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda i: post(port, f"{prefix}{i}"), range(n)))


def size(path):
    stripped = path + ".stripped"
    subprocess.run(["strip", "-o", stripped, path], check=True)
    built, small = os.path.getsize(path), os.path.getsize(stripped)
    os.remove(stripped)
    return built, small


def mib(n):
    return f"{n / 1024 / 1024:.1f} MiB"


def main():
    for name, path in [("collabd (CLI, default features)", CLI),
                       ("examples/embed, --no-default-features", EMBED)]:
        built, small = size(path)
        print(f"| binary size: {name} | {mib(built)} as built (debug = 1), {mib(small)} stripped |")

    starts = []
    for _ in range(20):
        proc, _, data, ready = start([])
        starts.append(ready)
        stop(proc, data)
    print(f"| exec → first answered request (median of 20) | {statistics.median(starts) * 1000:.1f} ms |")

    proc, port, data, _ = start(["--room-idle-ms", "600000"])
    time.sleep(1)
    idle0 = rss_kib(proc.pid)
    write_rooms(port, 100, "idle/")
    time.sleep(1)
    idle100 = rss_kib(proc.pid)
    stop(proc, data)
    print(f"| idle RSS, 0 rooms | {idle0 / 1024:.1f} MiB |")
    print(f"| idle RSS, 100 idle rooms loaded | {idle100 / 1024:.1f} MiB ({(idle100 - idle0) / 100:.1f} KiB per room) |")

    print()
    print("| `store_cache_bytes` | start | 12k | 24k | 36k | 48k rooms written | database |")
    print("|---|---|---|---|---|---|---|")
    for label, cache in [("64 MiB (default)", None), ("1 GiB (sled's default)", 1 << 30),
                         ("1 MiB", 1 << 20)]:
        # Rooms unload as soon as they are idle; the per-address HTTP rate limit is lifted
        # (one client writes them all).
        args = ["--room-idle-ms", "0", "--http-rate-per-ip", "1000000",
                "--http-burst-per-ip", "1000000"]
        if cache is not None:
            args += ["--store-cache-bytes", str(cache)]
        proc, port, data, _ = start(args)
        time.sleep(0.5)
        series = [rss_kib(proc.pid)]
        for round_ in range(4):
            write_rooms(port, 12000, f"soak{round_}/")
            time.sleep(2)
            series.append(rss_kib(proc.pid))
        db = sum(os.path.getsize(os.path.join(d, f))
                 for d, _, fs in os.walk(os.path.join(data, "db")) for f in fs)
        stop(proc, data)
        cells = " | ".join(f"{kib / 1024:.0f}" for kib in series)
        print(f"| {label} | {cells} MiB | {mib(db)} |")


if __name__ == "__main__":
    sys.exit(main())
