#!/usr/bin/env python3
"""Cluster mode's costs (BENCHMARKS.md, "Cluster mode"): one node on sled, one node on
Redis, three nodes on one Redis, side by side in one run.

- Fan-out: 200 WebSocket clients in one room, one writer at RATE updates/s (20 and 100),
  clients spread over the nodes (`collabd-bench --url A,B,C`), the writer on the first.
  Latency p50/p99 from the writer's send to each delivery; CPU per delivery of every
  server process (the nodes and Redis); Redis' CPU (INFO cpu, its whole process, cron
  included: at low rates that dominates) and commands per update.
- Durable appends: 200 concurrent HTTP writers (`appends`), each waiting for its answer
  before the next, spread over the nodes: appends/s, answer p50/p99, CPU per append of
  the nodes and of Redis, Redis commands per append.

Redis runs with `appendonly yes` and `appendfsync always` (an ack is on disk). Every
server process (Redis and the nodes) is pinned to core SERVER_CPU (default 0), the load
generator to BENCH_CPU (default 1), with taskset.

Usage: cargo build --release --workspace && python3 bench/cluster.py [SECONDS]
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.path.join(ROOT, "target/release/collabd")
BENCH = os.path.join(ROOT, "target/release/collabd-bench")
APPENDS = os.path.join(ROOT, "target/release/appends")
SERVER_CPU = os.environ.get("SERVER_CPU", "0")
BENCH_CPU = os.environ.get("BENCH_CPU", "1")
CLK_TCK = os.sysconf("SC_CLK_TCK")
LIFT = ["--max-connections", "20000", "--max-connections-per-room", "20000",
        "--max-connections-per-ip", "20000", "--admission-rate", "100000",
        "--admission-burst", "100000", "--admission-rate-per-ip", "100000",
        "--admission-burst-per-ip", "100000", "--session-rate", "100000",
        "--session-burst", "100000", "--http-rate-per-ip", "1000000",
        "--http-burst-per-ip", "1000000"]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cpu_ticks(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


class Redis:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="collabd-bench-redis-")
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["taskset", "-c", SERVER_CPU, "redis-server", "--port", str(self.port),
             "--bind", "127.0.0.1", "--dir", self.dir, "--appendonly", "yes",
             "--appendfsync", "always", "--save", "", "--maxmemory-policy", "noeviction",
             "--daemonize", "no"], stdout=subprocess.DEVNULL)
        for _ in range(200):
            if self.cli("PING") == "PONG":
                return
            time.sleep(0.02)
        raise SystemExit("redis-server did not start")

    def cli(self, *args):
        out = subprocess.run(["redis-cli", "-p", str(self.port), *args],
                             capture_output=True, text=True)
        return out.stdout.strip()

    def calls(self):
        """Commands Redis ran, scripts' inner commands included (INFO commandstats)."""
        return sum(int(m) for m in re.findall(r"calls=(\d+)", self.cli("INFO", "commandstats")))

    def cpu(self):
        """Redis' own CPU seconds, to the microsecond (INFO cpu: getrusage)."""
        info = self.cli("INFO", "cpu")
        return sum(float(m) for m in re.findall(r"used_cpu_(?:sys|user):([0-9.]+)", info))

    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Node:
    def __init__(self, extra):
        self.dir = tempfile.mkdtemp(prefix="collabd-bench-node-")
        self.proc = subprocess.Popen(
            ["taskset", "-c", SERVER_CPU, CLI, "--bind", "127.0.0.1:0", "--data-dir",
             os.path.join(self.dir, "db"), *LIFT, *extra],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
            env={**os.environ, "RUST_LOG": "warn,collabd::server=info"})
        for line in self.proc.stderr:
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        else:
            raise SystemExit("collabd did not start")
        # taskset execs collabd: same pid.
        self.pid = self.proc.pid

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def setup(kind):
    if kind == "1 node, sled":
        return None, [Node([])]
    redis = Redis()
    n = 1 if kind == "1 node + Redis" else 3
    return redis, [Node(["--redis-url", redis.url()]) for _ in range(n)]


def fanout(kind, rate, seconds):
    redis, nodes = setup(kind)
    try:
        urls = ",".join(f"ws://127.0.0.1:{n.port}/ws" for n in nodes)
        more = [n.pid for n in nodes[1:]] + ([redis.proc.pid] if redis else [])
        calls0 = redis.calls() if redis else 0
        r_cpu0 = redis.cpu() if redis else 0
        out = subprocess.check_output(
            ["taskset", "-c", BENCH_CPU, BENCH, "--url", urls, "--rooms", "1",
             "--clients", "200", "--writers", "1", "--rate", str(rate), "--duration",
             str(seconds), "--pid", str(nodes[0].pid), "--clk-tck", str(CLK_TCK),
             "--json", *(["--more-pids", ",".join(map(str, more))] if more else [])],
            text=True)
        report = json.loads(out.strip().splitlines()[-1])
        updates = max(report["updates_sent"], 1)
        row = {
            "setup": kind, "rate": rate,
            "p50_ms": report["latency_us_p50"] / 1000, "p99_ms": report["latency_us_p99"] / 1000,
            "lost": report["deliveries_lost"],
            "cpu_us_per_delivery": report.get("server_cpu_us_per_delivery"),
        }
        if redis:
            row["redis_cpu_us_per_update"] = (redis.cpu() - r_cpu0) / updates * 1e6
            row["redis_calls_per_update"] = (redis.calls() - calls0) / updates
        return row
    finally:
        for n in nodes:
            n.stop()
        if redis:
            redis.stop()


def appends(kind, seconds):
    redis, nodes = setup(kind)
    try:
        urls = ",".join(f"http://127.0.0.1:{n.port}" for n in nodes)
        ticks0 = sum(cpu_ticks(n.pid) for n in nodes)
        calls0 = redis.calls() if redis else 0
        r_cpu0 = redis.cpu() if redis else 0
        out = subprocess.check_output(
            ["taskset", "-c", BENCH_CPU, APPENDS, "--url", urls, "--writers", "200",
             "--rooms", "20", "--duration", str(seconds)], text=True)
        report = json.loads(out)
        assert report["failures"] == 0, report
        n = report["appends"]
        row = {
            "setup": kind, "appends_per_sec": report["appends_per_sec"],
            "p50_ms": report["latency_us_p50"] / 1000, "p99_ms": report["latency_us_p99"] / 1000,
            "collabd_cpu_us_per_append": (sum(cpu_ticks(x.pid) for x in nodes) - ticks0) / CLK_TCK / n * 1e6,
        }
        if redis:
            row["redis_cpu_us_per_append"] = (redis.cpu() - r_cpu0) / n * 1e6
            row["redis_calls_per_append"] = (redis.calls() - calls0) / n
        return row
    finally:
        for n in nodes:
            n.stop()
        if redis:
            redis.stop()


def fmt(v, digits=1):
    return "—" if v is None else f"{v:,.{digits}f}"


def main():
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10
    setups = ["1 node, sled", "1 node + Redis", "3 nodes + Redis"]
    print("Fan-out, 200 clients, 1 writer:\n")
    print("| setup | updates/s | p50 | p99 | lost | server CPU / delivery | Redis CPU / update | Redis commands / update |")
    print("|---|---|---|---|---|---|---|---|")
    for rate in (20, 100):
        for kind in setups:
            r = fanout(kind, rate, seconds)
            print(f"| {kind} | {rate} | {fmt(r['p50_ms'], 2)} ms | {fmt(r['p99_ms'], 2)} ms | {r['lost']} | "
                  f"{fmt(r['cpu_us_per_delivery'])} µs | {fmt(r.get('redis_cpu_us_per_update'))} µs | "
                  f"{fmt(r.get('redis_calls_per_update'))} |", flush=True)
    print("\nDurable appends, 200 HTTP writers, 20 rooms:\n")
    print("| setup | appends/s | p50 | p99 | collabd CPU / append | Redis CPU / append | Redis commands / append |")
    print("|---|---|---|---|---|---|---|")
    for kind in setups:
        r = appends(kind, seconds)
        print(f"| {kind} | {fmt(r['appends_per_sec'], 0)} | {fmt(r['p50_ms'])} ms | {fmt(r['p99_ms'])} ms | "
              f"{fmt(r['collabd_cpu_us_per_append'])} µs | {fmt(r.get('redis_cpu_us_per_append'))} µs | "
              f"{fmt(r.get('redis_calls_per_append'))} |", flush=True)


if __name__ == "__main__":
    main()
