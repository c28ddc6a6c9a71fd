#!/usr/bin/env bash
# Measures a deploy's downtime: one writer per data directory, so a deploy is stop, then
# start. Starts `miqat serve` over DATA_DIR (if it is not already serving there), then sends
# SIGTERM, waits for the exit, starts it again and polls /readyz every 10 ms. Prints the
# stop time, the start-to-ready time and their sum, the downtime clients see.
#
#   deploy/restart-downtime.sh MIQAT_BINARY CATALOG DATA_DIR ADDR [extra serve flags...]
set -euo pipefail
if [ $# -lt 4 ]; then
    echo "usage: $0 MIQAT_BINARY CATALOG DATA_DIR ADDR [serve flags...]" >&2
    exit 2
fi
BIN=$1 CATALOG=$2 DATA_DIR=$3 ADDR=$4
shift 4
LOG=${LOG:-$(mktemp)}

now_ms() { date +%s%3N; }
ready() { curl -fsS -o /dev/null --max-time 1 "http://$ADDR/readyz" 2>/dev/null; }
start() {
    "$BIN" serve --catalog "$CATALOG" --data-dir "$DATA_DIR" --listen "$ADDR" "$@" >>"$LOG" 2>&1 &
    PID=$!
}
wait_ready() {
    until ready; do
        kill -0 "$PID" 2>/dev/null || { echo "miqat exited; log: $LOG" >&2; exit 1; }
        sleep 0.01
    done
}

start "$@"
wait_ready
stop_begin=$(now_ms)
kill -TERM "$PID"
wait "$PID" || { echo "stop failed; log: $LOG" >&2; exit 1; }
stopped=$(now_ms)
start "$@"
wait_ready
ready_at=$(now_ms)
kill -TERM "$PID"
wait "$PID" || true
echo "stop (drain, snapshot, flush): $((stopped - stop_begin)) ms"
echo "start to ready (recovery):     $((ready_at - stopped)) ms"
echo "downtime (stop + start):       $((ready_at - stop_begin)) ms"
echo "log: $LOG"
