#!/usr/bin/env python3
"""Redis memory per room with and without the PostgreSQL archive (BENCHMARKS.md,
"Cluster mode: Redis memory"): 10,000 rooms written, then 1,000 of them kept active.

One node, one Redis (`appendonly yes`, `appendfsync always`), and with the archive the
machine's PostgreSQL (COLLABD_TEST_POSTGRES_URL, default
postgres://postgres@127.0.0.1:5432/postgres; a fresh database, dropped afterwards).
Phase 1: `appends` with 10,000 writers on 10,000 rooms for SECONDS (each room gets its
own keystrokes). Then the rooms go idle for IDLE seconds (with the archive:
--archive-idle-ms 5000, --room-idle-ms 1000, so idle rooms leave Redis). Phase 2: 1,000
writers on rooms 0..999 for SECONDS. Redis' `used_memory` is read after each phase.

Usage: cargo build --release --workspace && python3 bench/archive.py [SECONDS] [IDLE]
"""
import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import Redis, Node, APPENDS, BENCH_CPU  # noqa: E402

ADMIN = os.environ.get("COLLABD_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")


def used_memory(redis):
    return int(re.search(r"used_memory:(\d+)", redis.cli("INFO", "memory")).group(1))


def write(node, writers, rooms, seconds):
    out = subprocess.check_output(
        ["taskset", "-c", BENCH_CPU, APPENDS, "--url", f"http://127.0.0.1:{node.port}",
         "--writers", str(writers), "--rooms", str(rooms), "--duration", str(seconds)],
        text=True)
    report = json.loads(out)
    assert report["failures"] == 0, report
    return report["appends"]


def run(label, archive, seconds, idle):
    redis = Redis()
    db = None
    extra = ["--redis-url", redis.url()]
    if archive:
        db = f"collabd_bench_archive_{os.getpid()}"
        subprocess.run(["psql", ADMIN, "-qc", f"create database {db}"], check=True)
        extra += ["--postgres-url", ADMIN.rsplit("/", 1)[0] + "/" + db, "--archive-after", "100",
                  "--archive-idle-ms", "5000", "--room-idle-ms", "1000"]
    node = Node(extra)
    try:
        empty = used_memory(redis)
        n1 = write(node, 10_000, 10_000, seconds)
        after_write = used_memory(redis)
        time.sleep(idle)
        after_idle = used_memory(redis)
        rooms_in_redis = len(redis.cli("--scan", "--pattern", "collabd:{*}:seq").split())
        n2 = write(node, 1_000, 1_000, seconds)
        active = used_memory(redis)
        print(f"| {label} | {n1:,} | {(after_write - empty) / 10_000:,.0f} B | "
              f"{rooms_in_redis:,} | {(after_idle - empty) / 10_000:,.0f} B | {n2:,} | "
              f"{(active - empty) / 1024 / 1024:,.1f} MiB |", flush=True)
    finally:
        node.stop()
        redis.stop()
        if db:
            subprocess.run(["psql", ADMIN, "-qc", f"drop database if exists {db} with (force)"])


def main():
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10
    idle = float(sys.argv[2]) if len(sys.argv) > 2 else 15
    print("| setup | phase 1 appends | Redis bytes per room written | rooms in Redis after idle | "
          "bytes per room after idle | phase 2 appends (1,000 rooms) | Redis memory, 1,000 active |")
    print("|---|---|---|---|---|---|---|")
    run("Redis only", False, seconds, idle)
    run("Redis + PostgreSQL archive", True, seconds, idle)


if __name__ == "__main__":
    main()
