# One target per role (docs/operations/install-roles.md):
#   docker build --target api .     the API alone (`engram serve --no-worker`, `engram migrate`): the `serve`
#                                   extra, no torch, so a replica's image holds no CUDA libraries
#   docker build --target worker .  a training worker (`engram worker`): the `worker` extra, torch included
#   docker build .                  (the last target, `all`) one host: the API with its local worker
# GPU workers: build the worker with --build-arg BASE=<a CUDA runtime image with Python 3.11>.
ARG API_BASE=python:3.11-slim
ARG BASE=python:3.11-slim

FROM ${API_BASE} AS api
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 ENGRAM_DATA_DIR=/data
WORKDIR /app
RUN useradd --create-home --uid 10001 engram && mkdir /data && chown 10001 /data
COPY pyproject.toml README.md ./
COPY model_core ./model_core
COPY service ./service
RUN pip install --no-cache-dir uv==0.13.8 && uv pip install --system --no-cache -e '.[serve]'
USER 10001
VOLUME /data
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3)"]
ENTRYPOINT ["engram"]
CMD ["serve", "--no-worker", "--host", "0.0.0.0", "--port", "8000"]

FROM ${BASE} AS worker
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 ENGRAM_DATA_DIR=/data
WORKDIR /app
RUN useradd --create-home --uid 10001 engram && mkdir /data && chown 10001 /data
COPY pyproject.toml README.md ./
COPY model_core ./model_core
COPY service ./service
COPY benchmarks ./benchmarks
RUN pip install --no-cache-dir uv==0.13.8 && uv pip install --system --no-cache -e '.[worker]'
# Pretrained backbone weights baked into the image, e.g. --build-arg BAKE_WEIGHTS="timm/resnet50 torchvision/resnet18":
# downloaded now into the weights cache, so hosts that may not download (the default) still use them.
# timm/efficientnet_lite0 needs nothing here: its weights come with a Python package.
ARG BAKE_WEIGHTS=""
ENV ENGRAM_WEIGHTS_CACHE_DIR=/opt/engram/weights
RUN mkdir -p /opt/engram/weights \
    && if [ -n "${BAKE_WEIGHTS}" ]; then python -m model_core.backbone_check fetch "${BAKE_WEIGHTS}" --cache-dir /opt/engram/weights; fi \
    && chown -R 10001 /opt/engram/weights
USER 10001
VOLUME /data
HEALTHCHECK NONE
ENTRYPOINT ["engram"]
CMD ["worker"]

# The worker's environment (the `worker` extra holds the `serve` one) running the API and its local worker.
FROM worker AS all
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3)"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
