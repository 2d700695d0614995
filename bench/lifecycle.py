#!/usr/bin/env python3
"""Room lifecycle's cost (BENCHMARKS.md, "Room lifecycle"): listing rooms and deleting
them, on one node on sled.

The node runs on core SERVER_CPU (default 0), keeping every record (`--replay-window
1000000`, a snapshot every 1,000 updates, so a deletion has many records to remove).
`appends` (core BENCH_CPU, default 1) first writes keystroke-sized updates into 10,000
rooms, then fills three rooms until each holds over 100,000 updates (each run of `appends` is
200 writers; writer w writes room `first + w`). Then, median of
5 (min, max):

- `GET /rooms?prefix=appends/&limit=100`: the first page, a page from the middle
  (`after=appends/5000`), and one page of 1,000;
- `DELETE /rooms/{room}` of rooms holding a few dozen updates (not loaded: the deletion
  reads the room from the store), and of the three rooms of over 100,000 updates (every
  record kept: the deletion removes them all).

Usage: cargo build --release --workspace && python3 bench/lifecycle.py
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


def call(port, path, method="GET"):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    started = time.perf_counter()
    with urllib.request.urlopen(request) as r:
        body = r.read()
    return time.perf_counter() - started, json.loads(body)


def appends(port, rooms, seconds, first=0):
    subprocess.check_output(
        ["taskset", "-c", BENCH_CPU, APPENDS, "--url", f"http://127.0.0.1:{port}",
         "--writers", "200", "--rooms", str(rooms), "--first-room", str(first),
         "--duration", str(seconds)])


def row(label, times, note=""):
    ms = [t * 1000 for t in times]
    print(f"| {label} | {statistics.median(ms):,.1f} ms | {min(ms):,.1f} ms | "
          f"{max(ms):,.1f} ms | {note} |")


def main():
    node = Node(["--replay-window", "1000000", "--snapshot-every", "1000",
                 "--max-rooms", "20000", "--room-idle-ms", "2000"])
    try:
        # 200 writers write 200 rooms at a time (writer w, room first + w).
        for first in range(0, 10_000, 200):
            appends(node.port, 200, 0.2, first)
        while min(call(node.port, f"/rooms/appends/{i}")[1]["seq"] for i in range(3)) < 100_000:
            appends(node.port, 3, 5)
        big = [call(node.port, f"/rooms/appends/{i}")[1]["seq"] for i in range(3)]
        _, page = call(node.port, "/rooms?prefix=appends/&limit=1000")
        listed = len(page["rooms"])
        # Idle rooms leave memory: the small deletions read their rooms from the store.
        time.sleep(5)
        print(f"10,000 rooms; appends/0..2 hold {', '.join(f'{s:,}' for s in big)} updates\n")
        print("| operation | median | min | max | |")
        print("|---|---|---|---|---|")
        for label, path in (
            ("`GET /rooms?limit=100`, first page", "/rooms?prefix=appends/&limit=100"),
            ("`GET /rooms?limit=100`, from the middle",
             "/rooms?prefix=appends/&after=appends/5000&limit=100"),
            ("`GET /rooms?limit=1000`", "/rooms?prefix=appends/&limit=1000"),
        ):
            times = [call(node.port, path)[0] for _ in range(5)]
            row(label, times, f"{listed} rooms per 1,000-page" if "1000`" in label else "")
        small = []
        sizes = [call(node.port, f"/rooms/appends/{i}")[1]["seq"] for i in range(100, 105)]
        time.sleep(3)  # the reads loaded them; let them go again
        for i in range(100, 105):
            t, answer = call(node.port, f"/rooms/appends/{i}", "DELETE")
            small.append(t)
        row(f"`DELETE`, a room of {min(sizes)}–{max(sizes)} updates (not loaded)", small,
            f"epoch {answer['epoch']}")
        large = []
        for i in range(3):
            t, answer = call(node.port, f"/rooms/appends/{i}", "DELETE")
            large.append(t)
        row("`DELETE`, a room of 100,000 updates", large, f"next seq {answer['seq']:,}")
    finally:
        node.stop()


if __name__ == "__main__":
    main()
