# Engram image. Until the HTTP service lands (issue: the service) it runs the engine's own commands;
# `docker run engram benchmark` runs the Split-Digits benchmark.
ARG BASE=python:3.11-slim
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
RUN useradd --create-home --uid 10001 engram
COPY pyproject.toml README.md ./
COPY model_core ./model_core
COPY service ./service
COPY benchmarks ./benchmarks
RUN pip install --no-cache-dir uv \
    && uv pip install --system --no-cache -e .
USER engram
ENTRYPOINT ["engram"]
CMD ["strategies"]
