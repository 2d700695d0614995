#!/usr/bin/env bash
# Smoke test of the load generator (CI): a few seconds of writes against a real collabd;
# fails unless nothing was lost and every client of every room converged.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet -p collabd --bin collabd
cargo build --quiet -p collabd-bench
target=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
data=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$data"' EXIT
RUST_LOG=info "$target/debug/collabd" --bind 127.0.0.1:0 --data-dir "$data/db" 2>"$data/log" &
pid=$!
port=""
for _ in $(seq 100); do
  port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$data/log")
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "$port" ] || { cat "$data/log"; echo "collabd did not start" >&2; exit 1; }
"$target/debug/collabd-bench" --url "ws://127.0.0.1:$port/ws" --rooms 2 --clients 4 \
  --writers 2 --rate 20 --duration 2 --apply --pid "$pid" --json > "$data/report.json"
python3 - "$data/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
ok = (r["connections_ok"] == 8 and r["updates_sent"] > 0 and r["deliveries_lost"] == 0
      and r["rooms_converged"] == r["rooms"] and r["state_vectors_equal"] is True)
print("bench smoke:", "ok" if ok else "FAILED", json.dumps(r))
sys.exit(0 if ok else 1)
PY
