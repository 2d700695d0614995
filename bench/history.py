#!/usr/bin/env python3
"""Time travel's cost (BENCHMARKS.md, "History reads"): the state of a room at a seq
100,000 updates back from its snapshot, rebuilt from the op log.

One node on sled, pinned to core SERVER_CPU (default 0), keeping every record
(`--replay-window 1000000`, a snapshot every 1,000 updates). `appends` (core BENCH_CPU,
default 1) writes keystroke-sized updates into one room from 200 writers until it holds
over 101,500; then `GET /rooms/{room}/json?at=SEQ` is timed (median of 5) at the room's
seq (the snapshot plus the records after it), at seq 1,000 (from the empty document)
and just before the snapshot (from the nearest checkpoint: one every 10,000 updates by
default; the snapshot is newer than the seq asked for).

Usage: cargo build --release --workspace && python3 bench/history.py
"""
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import Node, APPENDS, BENCH_CPU  # noqa: E402


def get(port, path):
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}") as r:
        body = r.read()
    return time.perf_counter() - started, body


def main():
    node = Node(["--replay-window", "1000000", "--snapshot-every", "1000"])
    try:
        seq = 0
        while seq < 101_500:
            subprocess.check_output(
                ["taskset", "-c", BENCH_CPU, APPENDS, "--url", f"http://127.0.0.1:{node.port}",
                 "--writers", "200", "--rooms", "1", "--duration", "3"])
            seq = json.loads(get(node.port, "/rooms/appends/0")[1])["seq"]
        info = json.loads(get(node.port, "/rooms/appends/0")[1])
        snapshot = info["snapshot_seq"]
        print(f"room: seq {info['seq']}, snapshot at {snapshot}, {info['size']:,} bytes\n")
        print("| at | base | updates replayed | median | min | max |")
        print("|---|---|---|---|---|---|")
        for label, at, base, replayed in (
            ("the room's seq", info["seq"], "snapshot", info["seq"] - snapshot),
            ("1,000", 1000, "empty document", 1000),
            ("snapshot − 1", snapshot - 1, "checkpoint",
             (snapshot - 1) - (snapshot - 1) // 10_000 * 10_000),
        ):
            times = []
            for _ in range(5):
                t, _ = get(node.port, f"/rooms/appends/0/json?at={at}")
                times.append(t)
            print(f"| {label} ({at:,}) | {base} | {replayed:,} | "
                  f"{statistics.median(times) * 1000:,.1f} ms | {min(times) * 1000:,.1f} ms | "
                  f"{max(times) * 1000:,.1f} ms |")
    finally:
        node.stop()


if __name__ == "__main__":
    main()
