#!/usr/bin/env bash
# Side-by-side benchmarks: collabd against the reference y-websocket server
# (@y/websocket-server 0.1.1 with yjs 13.6.33), on this machine, one after another, each
# scenario against a fresh server process. Figures go to $OUT (JSON lines per run) and a
# Markdown table to stdout. Usage: bench/compare.sh [scenario ...]
#
# The server runs pinned to core $SERVER_CPU (default 0) and the load generator to core
# $BENCH_CPU (default 1), with `taskset`, so that the generator does not take CPU from
# the server (collabd then sizes its worker and room thread pools to the one core it may
# use). The generator samples the server's CPU time from /proc/PID/stat.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/bench-results}
mkdir -p "$OUT"
cargo build --release --quiet -p collabd --bin collabd
cargo build --release --quiet -p collabd-bench
(cd bench/reference && npm ci --silent --no-audit --no-fund)

BENCH=target/release/collabd-bench
SERVER_CPU=${SERVER_CPU:-0}
BENCH_CPU=${BENCH_CPU:-1}
CLK_TCK=$(getconf CLK_TCK)
# The load generator is one client IP opening thousands of connections at full speed,
# so collabd's per-IP, per-room and admission limits are lifted for it. Both servers
# listen on 0.0.0.0 so that the idle scenarios can spread connections over the
# destinations 127.0.0.1-4 (--dest-ips; Linux finds ephemeral ports slowly past ~14,000
# towards one address).
COLLABD_FLAGS=(--max-connections 20000 --max-connections-per-room 20000
  --max-connections-per-ip 20000 --admission-rate 100000 --admission-burst 100000
  --admission-rate-per-ip 100000 --admission-burst-per-ip 100000)
# Writers in the fan-out scenarios send faster than one session's default share;
# cursor500 keeps the default share (200 frames/s): presence must never cost a close.
SESSION_LIFT=(--session-rate 100000 --session-burst 100000)

declare -A SCENARIOS=(
  [floor]="--rooms 1 --clients 2 --writers 1 --rate 50 --duration 10 --apply"
  [fanout]="--rooms 1 --clients 200 --writers 1 --rate 20 --duration 10"
  [fanout100]="--rooms 1 --clients 200 --writers 1 --rate 100 --duration 10"
  [fanout400]="--rooms 1 --clients 200 --writers 1 --rate 400 --duration 10"
  [saturation]="--rooms 1 --clients 200 --writers 4 --rate 5 --duration 5 --search --search-step 1.5"
  [rooms]="--rooms 100 --clients 10 --writers 1 --rate 5 --duration 10"
  [idle5k]="--rooms 100 --clients 50 --writers 0 --duration 0 --drain 0 --settle 5 --connect-rate 2000 --dest-ips 4"
  [joiners]="--joiners 200 --doc-mb 20"
  [cursors50]="--rooms 1 --clients 50 --awareness-senders 50 --awareness-rate 30 --duration 10 --drain 1 --settle 1 --connect-rate 500"
  [cursors200]="--rooms 1 --clients 200 --awareness-senders 20 --awareness-rate 30 --duration 10 --drain 1 --settle 1 --connect-rate 500"
  [cursors1000rooms]="--rooms 1000 --clients 5 --awareness-senders 5 --awareness-rate 30 --duration 10 --drain 2 --settle 2 --connect-rate 2000"
  [cursor500]="--rooms 1 --clients 2 --awareness-senders 1 --awareness-rate 500 --duration 60 --drain 1 --settle 1"
  [idle19k]="--rooms 100 --clients 195 --writers 0 --duration 0 --drain 0 --settle 5 --connect-rate 2000 --dest-ips 4"
)
# Extra collabd flags for one scenario (none today: the joiners' 20 MiB sync step 2 is
# larger than the default outbound_queue_bytes of 16 MiB, which bounds only what waits
# behind the frame being written; the document itself fits the defaults: updates of
# 4 MiB < max_frame_bytes, 20 MiB < max_doc_bytes, the 32 MiB session_bytes_burst).
declare -A COLLABD_EXTRA=()
ORDER=(floor fanout fanout100 fanout400 saturation rooms joiners idle5k idle19k)
[ $# -gt 0 ] && ORDER=("$@")

wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "server on port $1 did not start" >&2; exit 1
}

run() { # server scenario
  local server=$1 name=$2 url pid data=""
  case $server in
    collabd)
      data=$(mktemp -d)
      # shellcheck disable=SC2086
      RUST_LOG=warn taskset -c "$SERVER_CPU" target/release/collabd --bind 0.0.0.0:1234 --data-dir "$data" \
        "${COLLABD_FLAGS[@]}" $([ "$name" = cursor500 ] || echo "${SESSION_LIFT[@]}") \
        ${COLLABD_EXTRA[$name]:-} 2>>"$OUT/collabd.log" &
      pid=$!; url=ws://127.0.0.1:1234/ws; wait_port 1234 ;;
    reference)
      HOST=0.0.0.0 PORT=1235 taskset -c "$SERVER_CPU" node bench/reference/node_modules/@y/websocket-server/src/server.js \
        >>"$OUT/reference.log" 2>&1 &
      pid=$!; url=ws://127.0.0.1:1235; wait_port 1235 ;;
  esac
  # shellcheck disable=SC2086
  taskset -c "$BENCH_CPU" $BENCH --url "$url" --pid "$pid" --clk-tck "$CLK_TCK" --json ${SCENARIOS[$name]} > "$OUT/$name-$server.json" ||
    echo "== $name: $server: the generator failed (exit $?), see $OUT/$name-$server.json" >&2
  kill "$pid"; wait "$pid" 2>/dev/null || true
  [ -n "${data:-}" ] && rm -rf "$data"
  sleep 1
}

for name in "${ORDER[@]}"; do
  for server in collabd reference; do
    echo "== $name: $server (taskset -c $BENCH_CPU $BENCH ${SCENARIOS[$name]}; server on core $SERVER_CPU)" >&2
    run "$server" "$name"
  done
done
python3 bench/summarize.py "$OUT" "${ORDER[@]}"
