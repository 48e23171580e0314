# One image for the API (`serve`, the default) and for workers (`worker`).
# GPU workers: build with --build-arg BASE=<a CUDA runtime image with Python 3.11>.
ARG BASE=python:3.11-slim
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 ENGRAM_DATA_DIR=/data
WORKDIR /app
RUN useradd --create-home --uid 10001 engram && mkdir /data && chown 10001 /data
COPY pyproject.toml README.md ./
COPY model_core ./model_core
COPY service ./service
COPY benchmarks ./benchmarks
RUN pip install --no-cache-dir uv==0.13.8 && uv pip install --system --no-cache -e '.[server]'
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
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3)"]
ENTRYPOINT ["engram"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
