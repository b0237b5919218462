#!/usr/bin/env bash
# Schemathesis against the router's HTTP API v1 (docs/http.md): starts an
# emq-router of its own (fresh data_dir, free loopback ports, no job
# manager), loads the OpenAPI 3.1 document the router serves at
# /openapi.json (router/src/api/openapi.json) and checks every answer
# against it: no 5xx, documented status codes, content types, headers and
# bodies. Exits non-zero when schemathesis finds a failure.
#
# Usage: scripts/schemathesis.sh [ST_RUN_OPTION...]   (passed on to `st run`)
#   EMQTEST_BIN_DIR  where emq-router is (default: <repo>/target/debug)
#   ST_MAX_EXAMPLES  test cases per operation and phase (default 100)
#   ST_SEED          hypothesis seed (default 1: the same cases each run)
#   ST_PHASES        schemathesis phases (default examples,coverage,fuzzing,stateful)
#   ST_TIMEOUT       seconds the schemathesis run may take (default 300)
#
# Every request says `Accept: application/json`, so GET /v1/events answers
# its JSON page (with `text/event-stream` it would stream for ever).
# The venv (target/venv-schemathesis) is created on first use and reused.
# One worker: with two, hypothesis parses lambdas' source from two threads at
# once, which CPython 3.11 can fail ("AST constructor recursion depth
# mismatch") as a runtime error of the run.
# `wait` query parameters (jobs' results, events) are sent as 0 or 1 second
# at most when the generated value is a valid wait over 1 (see
# schemathesis_hooks.py): without a job manager nothing ends, and a run of
# 60 s waits would not fit CI's time.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO_ROOT/target/venv-schemathesis"
ST_VERSION="4.32.5"
BIN_DIR="${EMQTEST_BIN_DIR:-$REPO_ROOT/target/debug}"
ROUTER="$BIN_DIR/emq-router"
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [[ ! -x "$ROUTER" ]]; then
    echo "schemathesis.sh: no $ROUTER (cargo build --bins first)" >&2
    exit 1
fi
if ! "$VENV/bin/st" --version 2>/dev/null | grep -qF "version $ST_VERSION"; then
    echo "schemathesis.sh: installing schemathesis $ST_VERSION into $VENV" >&2
    [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q "schemathesis==$ST_VERSION" >&2
fi

WORK="$(mktemp -d -t emq-schemathesis.XXXXXX)"
ROUTER_PID=""
stop_router() {
    if [[ -n "$ROUTER_PID" ]] && kill -0 "$ROUTER_PID" 2>/dev/null; then
        kill -TERM "$ROUTER_PID" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$ROUTER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$ROUTER_PID" 2>/dev/null || true
        wait "$ROUTER_PID" 2>/dev/null || true
    fi
    ROUTER_PID=""
}
ST_PID=""
cleanup() {
    if [[ -n "$ST_PID" ]] && kill -0 "$ST_PID" 2>/dev/null; then
        kill -TERM "$ST_PID" 2>/dev/null || true
        wait "$ST_PID" 2>/dev/null || true
    fi
    stop_router
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

http_code() { # URL -> the status code, 000 when nothing answers
    curl -s -o /dev/null -m 5 -w '%{http_code}' "$1" 2>/dev/null || true
}

# Four free loopback ports (all bound at once, so no two are the same). A
# port can still be taken before the router binds it: then the router exits
# at once and is started again on others.
DATA_DIR="$WORK/data"
HTTP_PORT=""
for try in 1 2 3 4 5; do
    read -r P_FRONT P_BACK P_ADMIN P_HTTP < <("$VENV/bin/python" - <<'EOF'
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
EOF
)
    rm -rf "$DATA_DIR"
    mkdir -p "$DATA_DIR"
    # From $WORK: no stray ./settings.toml.
    (cd "$WORK" && RUST_LOG=warn NO_COLOR=1 exec "$ROUTER" \
        --frontend-addr "tcp://127.0.0.1:$P_FRONT" --backend-addr "tcp://127.0.0.1:$P_BACK" \
        --administrative-addr "tcp://127.0.0.1:$P_ADMIN" --http-addr "127.0.0.1:$P_HTTP" \
        --data-dir "$DATA_DIR" </dev/null >"$WORK/router.log" 2>&1) &
    ROUTER_PID=$!
    for _ in $(seq 600); do # 60 s
        kill -0 "$ROUTER_PID" 2>/dev/null || break
        if [[ "$(http_code "http://127.0.0.1:$P_HTTP/health")" == 200 && -s "$DATA_DIR/admin.token" ]]; then
            HTTP_PORT="$P_HTTP"
            break
        fi
        sleep 0.1
    done
    [[ -n "$HTTP_PORT" ]] && break
    echo "schemathesis.sh: emq-router did not come up (try $try); its log:" >&2
    tail -n 20 "$WORK/router.log" >&2 || true
    stop_router
done
if [[ -z "$HTTP_PORT" ]]; then
    echo "schemathesis.sh: emq-router did not start" >&2
    exit 1
fi
BASE="http://127.0.0.1:$HTTP_PORT"
TOKEN="$(tr -d '[:space:]' <"$DATA_DIR/admin.token")"
code="$(http_code "$BASE/openapi.json")"
if [[ "$code" != 200 ]]; then
    echo "schemathesis.sh: GET /openapi.json answered $code, not 200" >&2
    exit 1
fi

echo "schemathesis.sh: schemathesis $ST_VERSION against $BASE (emq-router pid $ROUTER_PID)" >&2
# In the background with `wait`, so a signal to this script is handled at
# once (cleanup stops schemathesis too).
(
    cd "$WORK"
    SCHEMATHESIS_HOOKS="$REPO_ROOT/scripts/schemathesis_hooks.py" exec timeout -k 10 "${ST_TIMEOUT:-300}" "$VENV/bin/st" run "$BASE/openapi.json" \
        --header "Authorization: Bearer $TOKEN" \
        --header "Accept: application/json" \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
        --phases "${ST_PHASES:-examples,coverage,fuzzing,stateful}" \
        --max-examples "${ST_MAX_EXAMPLES:-100}" \
        --seed "${ST_SEED:-1}" \
        --request-timeout 15 \
        --workers 1 \
        --generation-database none \
        --suppress-health-check too_slow \
        --no-color \
        "$@"
) &
ST_PID=$!
status=0
wait "$ST_PID" || status=$?
ST_PID=""
if [[ "$status" -ne 0 ]]; then
    if ! kill -0 "$ROUTER_PID" 2>/dev/null; then
        echo "schemathesis.sh: emq-router exited during the run; its log:" >&2
    else
        echo "schemathesis.sh: failed ($status); the router's log:" >&2
    fi
    tail -n 40 "$WORK/router.log" >&2 || true
    exit "$status"
fi
if ! kill -0 "$ROUTER_PID" 2>/dev/null; then
    echo "schemathesis.sh: emq-router exited during the run; its log:" >&2
    tail -n 40 "$WORK/router.log" >&2 || true
    exit 1
fi
echo "schemathesis.sh: no failures" >&2
