#!/usr/bin/env bash
# Create a Python virtualenv holding EventMQ 0.3.13 (the reference
# implementation emq must interoperate with).
#
# Usage: scripts/setup-venv.sh [VENV_DIR]     (default: <repo>/target/venv)
#
# EventMQ's pinned dependencies do not build on modern Python, so it is
# installed with --no-deps next to current versions of what it imports.
# Idempotent: a marker file makes a second run return at once.
# The last line printed on stdout is the venv's absolute path.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR="${1:-$REPO_ROOT/target/venv}"
PYTHON="${PYTHON:-python3}"

EVENTMQ_VERSION="0.3.13"
DEPS=(pyzmq six monotonic croniter future psutil)
MARKER_CONTENT="eventmq==$EVENTMQ_VERSION ${DEPS[*]}"

mkdir -p "$(dirname "$VENV_DIR")"
VENV_DIR="$(cd "$(dirname "$VENV_DIR")" && pwd)/$(basename "$VENV_DIR")"
MARKER="$VENV_DIR/.emq-eventmq-ready"

if [[ -f "$MARKER" && "$(cat "$MARKER")" == "$MARKER_CONTENT" \
      && -x "$VENV_DIR/bin/python" ]] \
   && "$VENV_DIR/bin/python" -c 'import eventmq, zmq' 2>/dev/null; then
    echo "$VENV_DIR"
    exit 0
fi

rm -f "$MARKER"
if [[ ! -x "$VENV_DIR/bin/python" ]]; then
    echo "setup-venv: creating $VENV_DIR" >&2
    "$PYTHON" -m venv "$VENV_DIR"
fi

VPY="$VENV_DIR/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$VPY" -m pip install -q "${DEPS[@]}"
"$VPY" -m pip install -q --no-deps "eventmq==$EVENTMQ_VERSION"

# Smoke test: the modules the router, job manager and client need import.
"$VPY" - <<'PY'
import eventmq, zmq
from eventmq import router, jobmanager, sender  # noqa: F401
from eventmq.client.messages import send_request  # noqa: F401
PY
for s in emq-router emq-jobmanager emq-cli; do
    [[ -x "$VENV_DIR/bin/$s" ]] || { echo "setup-venv: missing $s" >&2; exit 1; }
done

printf '%s\n' "$MARKER_CONTENT" > "$MARKER"
echo "$VENV_DIR"
