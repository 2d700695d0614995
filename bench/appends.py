#!/usr/bin/env python3
"""Durable appends per second with 200 concurrent writers: sled (fsynced) against
PostgreSQL (committed), same binary, same load (BENCHMARKS.md, "Durable appends").

Each writer POSTs its own keystroke-sized updates (made by yjs, `npm ci` first) to one of
20 rooms, one at a time: the next leaves when the previous is answered, that is durable.
The server runs on core SERVER_CPU (default 0); this client should run on another
(`taskset -c 1`). PostgreSQL is the machine's server (COLLABD_TEST_POSTGRES_URL, default
postgres://postgres@127.0.0.1:5432/postgres), on whatever cores it has: say so when
comparing.

Usage: cargo build --release && taskset -c 1 python3 bench/appends.py [SECONDS]
"""
import http.client
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.path.join(ROOT, "target/release/collabd")
WRITERS = 200
ROOMS = 20
PER_WRITER = 2000
ADMIN = os.environ.get("COLLABD_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")

GENERATE = r"""
import * as Y from 'yjs'
const [writers, per] = process.argv.slice(2).map(Number)
const out = []
for (let w = 0; w < writers; w++) {
  const doc = new Y.Doc()
  const text = doc.getText('t')
  const updates = []
  doc.on('update', u => updates.push(Buffer.from(u).toString('hex')))
  for (let i = 0; i < per; i++) text.insert(text.length, 'x')
  out.push(updates.join(' '))
}
process.stdout.write(out.join('\n'))
"""


def updates():
    script = os.path.join(ROOT, "bench", ".generate-updates.mjs")
    with open(script, "w") as f:
        f.write(GENERATE)
    try:
        out = subprocess.check_output(["node", script, str(WRITERS), str(PER_WRITER)], cwd=ROOT)
    finally:
        os.remove(script)
    return [[bytes.fromhex(u) for u in line.split()] for line in out.decode().split("\n")]


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


def run(port, per_writer, seconds):
    done = [0] * WRITERS
    stop = time.monotonic() + seconds

    def writer(w):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        room = f"appends/{w % ROOMS}"
        for update in per_writer[w]:
            if time.monotonic() >= stop:
                return
            conn.request("POST", f"/rooms/{room}/updates", body=update,
                         headers={"content-type": "application/octet-stream"})
            r = conn.getresponse()
            r.read()
            assert r.status == 200, r.status
            done[w] += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - began)


def main():
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10
    per_writer = updates()
    db = f"collabd_bench_{os.getpid()}"
    subprocess.run(["psql", ADMIN, "-qc", f"create database {db}"], check=True)
    try:
        for label, args in [("sled (fsynced)", []),
                            ("PostgreSQL (committed)", ["--postgres-url", ADMIN.rsplit("/", 1)[0] + "/" + db])]:
            proc, port, data = start(args)
            cpu_before = cpu_seconds(proc.pid)
            rate = run(port, per_writer, seconds)
            cpu = cpu_seconds(proc.pid) - cpu_before
            proc.terminate()
            proc.wait()
            shutil.rmtree(data, ignore_errors=True)
            print(f"| {label} | {rate:,.0f} durable appends/s | collabd CPU "
                  f"{cpu / (rate * seconds) * 1e6:.0f} µs per append |")
    finally:
        subprocess.run(["psql", ADMIN, "-qc", f"drop database if exists {db} with (force)"])


if __name__ == "__main__":
    main()
