#!/usr/bin/env bash
# Renders the router's dashboard in headless Chromium (Debian's `chromium`
# package) and saves docs/dashboard.png. Starts its own router and two job
# managers (release build) on free loopback ports, runs some jobs (a few
# failing), stops one job manager with SIGSTOP so it shows as stale, takes
# the screenshot, and stops everything it started, by pid.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v chromium >/dev/null || { echo "chromium not installed (apt-get install chromium)" >&2; exit 1; }
R=target/release
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
FE=tcp://127.0.0.1:$(port); BE=tcp://127.0.0.1:$(port); AD=tcp://127.0.0.1:$(port); HTTP=127.0.0.1:$(port)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
EMQ_DATA_DIR=$(mktemp -d) EMQ_HTTP_ADDR=$HTTP EMQ_HEARTBEAT_INTERVAL=1 EMQ_HEARTBEAT_TIMEOUT=2 RUST_LOG=error \
  $R/emq-router --frontend-addr "$FE" --backend-addr "$BE" --administrative-addr "$AD" & pids+=($!)
sleep 0.5
EMQ_ALLOWED_PATHS=benchjobs,testjobs EMQ_HEARTBEAT_INTERVAL=0.5 RUST_LOG=error $R/emq-jobmanager -B "$BE" -J 2 -n web --python-path jobs --python-path tests/pyjobs & pids+=($!)
EMQ_ALLOWED_PATHS=benchjobs,testjobs EMQ_HEARTBEAT_INTERVAL=0.5 RUST_LOG=error $R/emq-jobmanager -B "$BE" -J 1 -n batch -Q reports --python-path jobs & STOPPED=$!; pids+=($STOPPED)
sleep 2
$R/emq-send --addr "$FE" --wait --count 2000 --window 200 benchjobs.noop > /dev/null
$R/emq-send --addr "$FE" --wait --count 300 -q reports benchjobs.add 1 2 > /dev/null
for i in 1 2 3; do $R/emq-send --addr "$FE" --wait testjobs.fail "disk full on /var/$i" > /dev/null || true; done
$R/emq-send --addr "$FE" --wait --timeout 1 testjobs.sleep 5 > /dev/null || true
for i in $(seq 1 40); do $R/emq-send --addr "$FE" -q reports benchjobs.add 1 2 > /dev/null; done
$R/emq-send --addr "$FE" testjobs.sleep 30 > /dev/null
kill -STOP "$STOPPED"
sleep 3.5
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$(mktemp -d)" --hide-scrollbars \
  --window-size=1280,1150 --virtual-time-budget=4000 --screenshot=docs/dashboard.png "http://$HTTP/" 2>/dev/null
echo "saved docs/dashboard.png"
