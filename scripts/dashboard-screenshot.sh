#!/usr/bin/env bash
# Renders the router's dashboard in headless Chromium (Debian's `chromium`
# package) and saves docs/dashboard.png (the whole page: charts of the last
# minutes, queues with pause/resume/purge, callables, job managers, workers,
# dead letters with retry/delete, failures, schedules, delayed jobs) and
# docs/dashboard-job.png (the detail of a job that became a dead letter:
# headers, every attempt with its error and traceback, the result).
#
# Starts its own router and two job managers (release build) on free
# loopback ports, runs jobs for about 80 s (some failing, some retried into
# dead letters, one timing out), pauses a queue, stops one job manager with
# SIGSTOP so it shows as stale, takes the screenshots, and stops everything
# it started, by pid.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v chromium >/dev/null || { echo "chromium not installed (apt-get install chromium)" >&2; exit 1; }
cargo build --release -q -p emq
R=target/release
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
FE=tcp://127.0.0.1:$(port); BE=tcp://127.0.0.1:$(port); AD=tcp://127.0.0.1:$(port); HTTP=127.0.0.1:$(port)
DATA=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
EMQ_DATA_DIR=$DATA EMQ_HTTP_ADDR=$HTTP EMQ_HEARTBEAT_INTERVAL=1 EMQ_HEARTBEAT_TIMEOUT=2 EMQ_RETRY_DELAY=0.2 RUST_LOG=error \
  $R/emq-router --frontend-addr "$FE" --backend-addr "$BE" --administrative-addr "$AD" & pids+=($!)
sleep 0.5
TOKEN=$(cat "$DATA/admin.token")
cli() { $R/emq-cli -a "$AD" --token-file "$DATA/admin.token" "$@"; }
EMQ_ALLOWED_PATHS=benchjobs,testjobs EMQ_HEARTBEAT_INTERVAL=0.5 RUST_LOG=error $R/emq-jobmanager -B "$BE" -J 2 -n web --python-path jobs --python-path tests/pyjobs & pids+=($!)
EMQ_ALLOWED_PATHS=benchjobs,testjobs EMQ_HEARTBEAT_INTERVAL=0.5 RUST_LOG=error $R/emq-jobmanager -B "$BE" -J 1 -n batch -Q reports --python-path jobs --python-path tests/pyjobs & STOPPED=$!; pids+=($STOPPED)
sleep 2
# About 80 s of varying load: the charts get a point every 10 s.
for round in 1 2 3 4 5 6 7 8; do
  n=$(( (round % 4 + 1) * 1500 ))
  $R/emq-send --addr "$FE" --wait --count "$n" --window 200 benchjobs.noop > /dev/null
  $R/emq-send --addr "$FE" --wait --count 200 -q reports testjobs.sleep 0.01 > /dev/null
  $R/emq-send --addr "$FE" --wait testjobs.fail "disk full on /var/$round" > /dev/null || true
  sleep $(( 6 - round % 4 ))
done
# Dead letters (retried, then kept), a timeout, a schedule, delayed jobs.
for i in 1 2; do $R/emq-send --addr "$FE" --wait --retry 1 testjobs.fail "upstream 503 (try $i)" > /dev/null || true; done
DEAD=$(cli --json dead | python3 -c 'import json,sys; print(json.load(sys.stdin)["dead_letters"][0]["msgid"])')
$R/emq-send --addr "$FE" --wait --timeout 1 testjobs.sleep 5 > /dev/null || true
$R/emq-send --addr "$FE" --every 30s benchjobs.add 1 2 > /dev/null
$R/emq-send --addr "$FE" --cron "0 9 * * 1-5" --tz Europe/Paris --no-overlap benchjobs.noop > /dev/null
for i in 1 2 3; do $R/emq-send --addr "$FE" --delay "${i}h" benchjobs.add "$i" "$i" > /dev/null; done
cli pause reports > /dev/null
for i in $(seq 1 40); do $R/emq-send --addr "$FE" -q reports benchjobs.add 1 2 > /dev/null; done
$R/emq-send --addr "$FE" testjobs.sleep 60 > /dev/null
kill -STOP "$STOPPED"
sleep 5
shot() {
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --user-data-dir="$(mktemp -d)" --hide-scrollbars \
    --window-size="$1" --virtual-time-budget=5000 --screenshot="$2" "$3" 2>/dev/null
}
shot 1280,3000 docs/dashboard.png "http://$HTTP/"
shot 1280,1100 docs/dashboard-job.png "http://$HTTP/#token=$TOKEN&job=$DEAD"
echo "saved docs/dashboard.png and docs/dashboard-job.png"
