#!/usr/bin/env bash
# One command for the whole benchmark: builds emq in release mode, prepares
# the peers (EventMQ 0.3.13 venv, Celery + Redis venv), runs every scenario
# several times and prints one markdown table (also bench/results/latest.md).
#   bench/run.sh [--runs K] [--quick] [--only 1,2,...] [--eventmq-n N]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release -q --bins -p emq -p emq-bench
EVENTMQ_VENV=$(bash scripts/setup-venv.sh | tail -n 1)
CELERY_VENV=$(bash bench/celery/setup.sh 2>/dev/null | tail -n 1 || echo NO_REDIS)
exec python3 bench/run.py --eventmq-venv "$EVENTMQ_VENV" --celery-venv "$CELERY_VENV" "$@"
