# Appraise images, one Dockerfile:
#   API (CPU):      docker build --target api -t appraise-api .
#   worker (CUDA):  docker build --target worker --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 \
#                       --build-arg TORCH_VERSION=2.14.1 -t appraise-worker .
#   Ray node:       docker build --target ray (same build args as the worker) -t appraise-ray .
# The base stage is the CLI image (batch valuations: `docker run appraise value ...`).
FROM python:3.11-slim AS base

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv/appraise

RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"

COPY pyproject.toml setup.py README.md ./
COPY app ./app
COPY migrations ./migrations
# A C compiler only while installing: it builds the small-SPD kernel (setup.py), then leaves the image.
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends gcc libc6-dev \
    && pip install . \
    && python -c "from app.valuation.shapley import small_spd; assert small_spd.AVAILABLE" \
    && apt-get purge -y -qq gcc libc6-dev && apt-get autoremove -y -qq && rm -rf /var/lib/apt/lists/*

RUN useradd --system --uid 10001 --home /srv/appraise appraise \
    && mkdir -p /srv/appraise/var \
    && chown appraise /srv/appraise/var
USER appraise

ENV APPRAISE_STORAGE_DIR=/srv/appraise/var/storage
ENTRYPOINT ["appraise"]
CMD ["--help"]

FROM base AS api
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=5 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]

# The worker also carries Ray (the extra appraise[ray]): with APPRAISE_RAY_ADDRESS it shards Monte Carlo jobs
# over a Ray cluster, whose nodes run the `ray` image below (the same code and torch, so batches unpickle there).
FROM base AS worker
USER root
RUN pip install ".[ray]"
USER appraise
CMD ["worker"]

# A Ray node (head or worker) for the compose profile `ray`.
FROM worker AS ray
ENTRYPOINT ["ray"]
CMD ["start", "--head", "--block"]
