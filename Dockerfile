# streamscore worker / replayer image (used by docker-compose.yml).
#
#   docker build -t streamscore:local .
#   docker run --rm streamscore:local --help
#
# The project is installed editable from /app because pipelines/ and data/ are
# read from the source tree (streams/spec.py, streams/datasets.py); the native
# kernels (ext/) are compiled in place by scikit-build-core with Ninja.
# Only the sources are copied, never a host build (CMakeCache.txt, .venv, build/).
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    STREAMSCORE_STATE_DIR=/var/lib/streamscore/state \
    STREAMSCORE_METRICS_HOST=0.0.0.0

RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ cmake ninja-build \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml CMakeLists.txt README.md ./
COPY ext ext
COPY models models
COPY streams streams
COPY pipelines pipelines
COPY data data

# torch from the CPU-only index (the default wheel pulls in CUDA); the rest from PyPI
RUN rm -f ext/*.so \
 && pip install --extra-index-url https://download.pytorch.org/whl/cpu -e . \
 && python -c "import ext._native, streams.cli" \
 && useradd --system --uid 10001 --home-dir /var/lib/streamscore streamscore \
 && mkdir -p /var/lib/streamscore/state /streams \
 && chown -R streamscore /var/lib/streamscore /streams

USER streamscore
# /metrics (STREAMSCORE_METRICS_PORT) and faust's web port (STREAMSCORE_WEB_PORT): streams/settings.py defaults
EXPOSE 9464 6066
ENTRYPOINT ["streamscore"]
CMD ["worker"]
