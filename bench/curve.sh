#!/usr/bin/env bash
# CURVE on/off throughput, same run: router + job manager (2 workers) +
# emq-send --count N --wait (Rust client with results, window 1000).
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
R=$PWD/target/release
K=$(mktemp -d)
$R/emq keygen --out-dir $K --name router >/dev/null
$R/emq keygen --out-dir $K --name client >/dev/null
$R/emq keygen --out-dir $K --name jm >/dev/null
mkdir -p $K/front $K/back; cp $K/client.pub $K/front/; cp $K/jm.pub $K/back/
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
run() {
  local mode=$1
  FE=tcp://127.0.0.1:$(port); BE=tcp://127.0.0.1:$(port); AD=tcp://127.0.0.1:$(port)
  local renv=() jenv=() sflags=()
  if [ "$mode" = curve ]; then
    renv=(EMQ_CURVE_SECRET_KEY=$K/router.key EMQ_CURVE_FRONTEND_KEYS=$K/front EMQ_CURVE_BACKEND_KEYS=$K/back)
    jenv=(EMQ_CURVE_SERVER_KEY=$K/router.pub EMQ_CURVE_KEY=$K/jm.key)
    sflags=(--curve-server-key $K/router.pub --curve-key $K/client.key)
  fi
  env "${renv[@]}" EMQ_DATA_DIR=$(mktemp -d) EMQ_HTTP_ADDR= RUST_LOG=error $R/emq-router --frontend-addr $FE --backend-addr $BE --administrative-addr $AD & local rp=$!
  env "${jenv[@]}" EMQ_ALLOWED_PATHS=benchjobs RUST_LOG=error $R/emq-jobmanager -B $BE -J 2 --python-path $PWD/jobs & local jp=$!
  sleep 2
  (cd /tmp && $R/emq-send --addr $FE "${sflags[@]}" --count 20000 --window 1000 --wait --deadline 120 benchjobs.noop 2>&1 | tail -1)
  kill $jp; wait $jp 2>/dev/null; kill $rp; wait $rp 2>/dev/null
}
for i in 1 2 3; do for m in plain curve; do echo "$m: $(run $m)"; done; done
