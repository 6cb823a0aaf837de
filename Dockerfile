# syntax=docker/dockerfile:1
#
# The wa-consumer image: the daemon (`run`, the default), the webhook receiver (`webhook`),
# the sandbox and every other command, from one venv at /opt/wa-consumer/.venv (the same path
# deploy/systemd/ uses).
#
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) \
#                --build-arg SOURCE=<repository URL> -t wa-consumer:0.1.0 .
#
# Dependencies come from requirements.lock only (exact pins, sha256 hashes, wheels only), so
# two builds of one commit install the same bytes; the package itself goes in with --no-deps.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- builder: the venv ------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/wa-consumer/.venv
ENV PATH=/opt/wa-consumer/.venv/bin:$PATH

WORKDIR /src
# The lock first: this layer is rebuilt only when a pin changes, not on every code edit.
COPY requirements.lock ./
RUN pip install --require-hashes --only-binary=:all: --no-deps -r requirements.lock

# LICENSE* : the licence file goes into the package's metadata when the tree has one.
COPY pyproject.toml README.md LICENSE* ./
COPY wa_consumer ./wa_consumer
RUN pip install --no-deps . \
    && pip check \
    && wa-consumer --version

# ---- runtime ----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="wa-consumer" \
      org.opencontainers.image.description="Delivers outbound WhatsApp messages from RabbitMQ through Meta's Cloud API" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="MIT"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/wa-consumer/.venv/bin:$PATH

COPY --from=builder /opt/wa-consumer/.venv /opt/wa-consumer/.venv

# A numeric user (Kubernetes' runAsNonRoot can only check a number) that owns nothing: the
# daemon writes no file, so the root filesystem may be mounted read-only. Settings come from
# WA_* variables (or a .env mounted at /opt/wa-consumer/.env: the working directory).
USER 10001:10001
WORKDIR /opt/wa-consumer

# 9464: /metrics /healthz /readyz of `run`; 8090: `webhook` (its probes on the same port).
EXPOSE 9464 8090

# Liveness of `run` (no curl in slim: Python's urllib). For `webhook`, point the check at its
# port (compose does: http://127.0.0.1:8090/healthz).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('WA_METRICS_PORT', '9464'), timeout=4)"]

# Exec form: wa-consumer is PID 1 and gets SIGTERM itself. It installs its own SIGTERM/SIGINT
# handlers (graceful drain within WA_SHUTDOWN_GRACE_SECONDS; a second signal cuts the grace)
# and starts no child processes, so no init (tini) is needed to forward signals or reap; with
# `run --workers N` it is the supervisor, which passes signals on and reaps its workers itself.
STOPSIGNAL SIGTERM
ENTRYPOINT ["wa-consumer"]
CMD ["run"]
