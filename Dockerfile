# fastgw container image (docs/deploy.md, "Docker").
#
#   docker build -t fastgw:0.1.0 .
#   docker run --rm -p 8080:8080 -e JWT_SECRET=... fastgw:0.1.0
#
# Multi-stage: the build stage installs fastgw and its wheels into a venv, the final stage
# copies only that venv onto the same slim base.  Both stages use the official image's
# CPython, built with --enable-optimizations --with-lto (PGO + LTO; an unoptimised build
# costs ~8 % more CPU per request, docs/operations.md "Interpreter").  Every
# dependency ships manylinux wheels (uvloop, httptools, msgspec, orjson, hiredis,
# protobuf): no compiler in either stage.
#
# fastgw runs as PID 1 (no init wrapper): the supervisor installs its own TERM/INT/HUP/
# USR1/TTIN/TTOU handlers and reaps its workers, so `docker stop` (TERM) drains
# gracefully and `docker kill -s HUP` reloads the mounted config.  Give `docker stop
# -t` more than gateway.drain.delay + gateway.drain.timeout.
#
# No Docker daemon on the CI machine: scripts/docker-steps runs these steps in a fresh
# venv (RUN lines of the build stage, then ENTRYPOINT/CMD and the HEALTHCHECK command).
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fastgw ./fastgw
COPY config ./config
RUN python -m venv /opt/fastgw
RUN /opt/fastgw/bin/pip install '.[redis,otlp]'
# the installed gateway must accept the example config (fails the build otherwise)
RUN /opt/fastgw/bin/fastgw --check -c config/gateway.yaml

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 fastgw \
 && useradd --system --uid 10001 --gid fastgw --no-create-home --shell /usr/sbin/nologin fastgw
COPY --from=build /opt/fastgw /opt/fastgw
COPY config/gateway.yaml /etc/fastgw/gateway.yaml
# FASTGW_HOST: config/gateway.yaml binds ${FASTGW_HOST:-127.0.0.1}; a container serves
# on all of its addresses.  The admin listener (monitoring.metrics_host) stays on
# loopback in this default config: mount your own config to expose /metrics.
ENV PATH=/opt/fastgw/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    FASTGW_HOST=0.0.0.0 FASTGW_PORT=8080 FASTGW_METRICS_PORT=9090
USER 10001:10001
EXPOSE 8080 9090
STOPSIGNAL SIGTERM
# /livez on the admin listener (slim has no curl: the image's own Python asks)
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
  CMD python -c "import os,sys,urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:%s/livez' % os.environ.get('FASTGW_METRICS_PORT', '9090'), timeout=2).status != 200)"
ENTRYPOINT ["fastgw"]
CMD ["-c", "/etc/fastgw/gateway.yaml"]
