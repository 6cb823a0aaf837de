#!/usr/bin/env bash
# Set up, then run the demo: a sandbox, the daemon and sample traffic on the local RabbitMQ.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/wa-consumer demo "$@"
