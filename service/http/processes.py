"""``engram serve --workers N``: N serving processes on one port, sharing nothing but the database and
the artifact store.

uvicorn's supervisor binds the socket once and starts N fresh interpreters (spawn, never fork) that
accept on it; it restarts one that dies and stops them all on SIGTERM. Each process builds its own app
from the environment (``app_from_env``): its own ONNX Runtime sessions, micro-batchers, serving state
and NOTIFY listener, following promotions through the database like any other replica. The CPUs are
divided: unless ENGRAM_ORT_THREADS is set, each process gets ``cpus // N`` (at least one) ONNX Runtime
intra-op threads, so N processes never run more model threads than there are cores.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from service.settings import Settings

if TYPE_CHECKING:
    from litestar import Litestar


def app_from_env() -> Litestar:
    """uvicorn's app factory in each serving process: the parent passes its settings in the environment.
    Its /metrics names the process (``engram_process_info{pid=...}``): each process has its own."""
    from prometheus_client import Info

    from service.http.app import create_app

    app = create_app(Settings())
    Info(
        "engram_process", "the serving process these metrics are from", registry=app.state.service.metrics.registry
    ).info({"pid": str(os.getpid())})
    return app


def process_env(settings: Settings, workers: int) -> dict[str, str]:
    """What the serving processes need in their environment beyond the parent's own."""
    env = {"ENGRAM_DATA_DIR": str(settings.data_dir.resolve()), "ENGRAM_DATABASE_URL": settings.db_url,
           "ENGRAM_ARTIFACTS_DIR": str(settings.artifacts_path), "ENGRAM_INSECURE": str(settings.insecure).lower()}  # fmt: skip
    if settings.ort_threads == 0:
        env["ENGRAM_ORT_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // workers))
    return env


def serve_processes(settings: Settings, host: str, port: int, workers: int) -> None:
    """Run ``workers`` serving processes until SIGTERM or SIGINT."""
    import uvicorn

    os.environ.update(process_env(settings, workers))  # the spawned interpreters inherit it
    uvicorn.run("service.http.processes:app_from_env", factory=True, workers=workers, host=host, port=port,
                log_level="info", access_log=False,
                # uvicorn kills and replaces a process that misses a 5 s health ping; starting one imports
                # onnxruntime and Litestar, which takes longer than that on two busy cores.
                timeout_worker_healthcheck=60)  # fmt: skip
