# Appraise image. The CPU image is the default; build the CUDA worker image with
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 -t appraise:cuda .
FROM python:3.11-slim AS base

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv/appraise

RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"

COPY pyproject.toml README.md ./
COPY app ./app
COPY migrations ./migrations
RUN pip install .

RUN useradd --system --uid 10001 --home /srv/appraise appraise \
    && mkdir -p /srv/appraise/var \
    && chown appraise /srv/appraise/var
USER appraise

ENTRYPOINT ["appraise"]
CMD ["--help"]
