#!/usr/bin/env bash
# The whole test suite: set-up, lint, types, then unit and integration tests.
# Needs RabbitMQ (127.0.0.1:5672, guest/guest, rabbitmqctl for a test vhost) and PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check wa_consumer tests scripts
.venv/bin/ruff format --check wa_consumer tests scripts
.venv/bin/mypy wa_consumer
.venv/bin/pytest -q "$@"
