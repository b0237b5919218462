#!/usr/bin/env bash
# setup.sh [VENV] -- prepare the Celery 5 + Redis column of the benchmark.
#
# Creates a Python venv (default: <repo>/target/bench-venv) with celery[redis]
# (Celery 5.x) and makes sure a redis-server binary exists (via apt-get when
# running as root on Debian). Idempotent: a marker file in the venv records a
# finished install. Diagnostics go to stderr. The LAST stdout line is either
# the venv path, or NO_REDIS if no redis-server could be found/installed
# (exit status 0 in both cases, so callers can skip the column).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${1:-$REPO/target/bench-venv}"
PY="${PYTHON:-python3}"
CELERY_SPEC='celery[redis]>=5,<6'
MARKER="$VENV/.bench-celery-ok"

if [[ ! -f "$MARKER" ]]; then
    echo "setup.sh: creating venv $VENV" >&2
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$CELERY_SPEC" >&2
    "$VENV/bin/python" -c 'import celery, redis; assert celery.VERSION[0] == 5' >&2
    echo "$CELERY_SPEC" >"$MARKER"
else
    echo "setup.sh: venv $VENV already set up ($MARKER)" >&2
fi

if ! command -v redis-server >/dev/null 2>&1; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "setup.sh: redis-server missing; running apt-get update && apt-get install -y -q redis-server" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >&2 || true
        apt-get install -y -q --no-install-recommends redis-server >&2 || true
        # The Debian package may start a system redis on 6379; we don't use it
        # (the runner starts its own on a free port), so leave it as is.
    else
        echo "setup.sh: redis-server missing and cannot apt-get install (not root or no apt-get)" >&2
    fi
fi

if ! command -v redis-server >/dev/null 2>&1; then
    echo NO_REDIS
    exit 0
fi
echo "setup.sh: redis-server: $(command -v redis-server) ($(redis-server --version | head -1))" >&2
echo "$VENV"
