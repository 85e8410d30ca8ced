# syntax=docker/dockerfile:1
#
# tagging-sidecar container image.
#
#   docker build -t tagging-sidecar:dev .
#   docker run --rm tagging-sidecar:dev check-config
#
# Stage 1 installs the locked dependencies and the project's wheel under /install.
# Stage 2 is a clean slim runtime: no compiler, no pip, non-root uid 10001, and a
# layout that works with a read-only root filesystem (only /tmp needs to be
# writable; the Helm chart mounts an emptyDir there).
#
# Reproducible inputs:
# - the base image is pinned by digest (refresh both stages together with
#   `docker buildx imagetools inspect python:3.11-slim-bookworm`);
# - requirements.lock (runtime) and requirements-build.lock (setuptools, wheel)
#   pin every package with its hashes; pip refuses any file that does not match.
#   Regenerate them with `make lock` after changing pyproject.toml.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

# --------------------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# Dependencies first, in their own layer: it is rebuilt only when a lock changes.
# --no-deps: the locks list every transitive dependency, nothing may be resolved here.
COPY requirements-build.lock requirements.lock ./
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements-build.lock \
 && pip install --no-cache-dir --require-hashes --no-deps --prefix=/install -r requirements.lock

# Only what the build backend needs: metadata, readme (referenced by pyproject) and
# the package itself. Tests, charts and tooling stay out of the build context via
# .dockerignore.
COPY pyproject.toml README.md ./
COPY tagging_sidecar ./tagging_sidecar

# The project's own wheel, built with the locked setuptools (no build isolation, so
# nothing unpinned is fetched) and installed without touching the index.
RUN pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels . \
 && pip install --no-cache-dir --no-deps --no-index --prefix=/install /wheels/*.whl

# --------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="tagging-sidecar" \
      org.opencontainers.image.description="Kafka consumer sidecar forwarding Tagging records to tagging.v1.Havilah over gRPC" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

# TAGGING_HTTP__HOST: listen on all interfaces inside the container so probes and
# port mappings work; the application default (127.0.0.1) suits bare-metal use only.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONFAULTHANDLER=1 \
    TAGGING_HTTP__HOST=0.0.0.0 \
    TAGGING_HTTP__PORT=8080

# Nothing in the runtime installs packages: drop pip/setuptools/wheel so the final
# image carries no build or install tooling.
RUN python -m pip uninstall --yes pip setuptools wheel >/dev/null 2>&1 || true \
 && groupadd --system --gid 10001 tagging \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin tagging

COPY --from=builder /install /usr/local

# Fail the build early if the console script did not land on PATH.
RUN tagging-sidecar --help >/dev/null

USER 10001:10001
WORKDIR /tmp

EXPOSE 8080

ENTRYPOINT ["tagging-sidecar"]
CMD ["run"]
