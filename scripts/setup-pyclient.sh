#!/usr/bin/env bash
# Build and install the emq Python client (python/, maturin + pyo3) into a
# venv with pytest: what .ci/run and bench/pyclient.py use.
#
# Usage: scripts/setup-pyclient.sh [VENV_DIR]   (default: <repo>/target/pyclient-venv)
#
# The binding crate builds on its own (it is excluded from the workspace);
# its cargo output goes to target/pyclient-build so rebuilds are
# incremental. The last line printed on stdout is the venv's absolute path.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR="${1:-$REPO_ROOT/target/pyclient-venv}"
PYTHON="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [[ ! -x "$VENV_DIR/bin/python" ]]; then
    echo "setup-pyclient: creating $VENV_DIR" >&2
    "$PYTHON" -m venv "$VENV_DIR"
fi
"$VENV_DIR/bin/python" -m pip install -q pytest >&2
# Exactly what the README tells users: pip install ./python (maturin is
# fetched as the build backend).
CARGO_TARGET_DIR="${CARGO_TARGET_DIR_PYCLIENT:-$REPO_ROOT/target/pyclient-build}" \
    "$VENV_DIR/bin/python" -m pip install -q --force-reinstall --no-deps "$REPO_ROOT/python" >&2
"$VENV_DIR/bin/python" -c 'import emq, emq._native' >&2
cd "$VENV_DIR" && pwd
