"""What every worker process needs, whichever dispatcher feeds it: the job runner, heartbeats, and the
repair of what a killed worker left behind. Used by ``service.jobs.worker`` (SQLite polling) and
the procrastinate worker beside it; it imports neither.

No torch at import time: ``make_runner`` imports ``service.jobs.training`` in the worker process only.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.domain.job_status import LIVE  # a job in these states may still write its bundle
from service.persistence.models import Job, Version, make_engine, make_sessionmaker, utcnow
from service.settings import Settings
from service.storage import open_store
from service.storage.base import ArtifactStore

if TYPE_CHECKING:
    from service.jobs.training import JobRunner

log = logging.getLogger("engram.worker")


def beat(sessions: sessionmaker[Session], job_id: str) -> None:
    """Mark a running job alive."""
    try:
        with sessions() as s:
            job = s.get(Job, job_id)
            if job is not None:
                job.heartbeat_at = utcnow()
                s.commit()
    except Exception:  # a busy database must not kill the heartbeat
        log.warning("heartbeat for job %s failed", job_id, exc_info=True)


def _heartbeat(sessions: sessionmaker[Session], job_id: str, every: float, stop: threading.Event) -> None:
    while not stop.wait(every):
        beat(sessions, job_id)


def run_with_heartbeat(runner: JobRunner, sessions: sessionmaker[Session], job_id: str, every: float) -> None:
    """Run a claimed job while a thread keeps its heartbeat fresh."""
    stop = threading.Event()
    thread = threading.Thread(target=_heartbeat, args=(sessions, job_id, every, stop), daemon=True)
    thread.start()
    try:
        runner.run(job_id)
    finally:
        stop.set()
        thread.join()


def sweep_orphans(sessions: sessionmaker[Session], store: ArtifactStore) -> list[str]:
    """Delete bundle folders that no version row names and that no live job may still be writing: what a
    worker killed between writing a bundle and committing its row left behind. Returns what was removed."""
    with sessions() as s:
        # Ended jobs first, then the rows: a job that ended before the first read committed its row before
        # it, so the second read sees the row. A job not yet ended (or not yet seen) is never swept.
        ended = set(s.scalars(select(Job.id).where(Job.status.not_in(LIVE))))
        named = set(s.scalars(select(Version.artifact)))
    removed = []
    for relative, job_id in store.bundle_folders():
        if relative in named or (job_id is not None and job_id not in ended):
            continue
        store.remove(relative)
        removed.append(relative)
    if removed:
        log.warning("swept %d orphan bundle folder(s) left by a killed worker: %s", len(removed), ", ".join(removed))
    return removed


def make_runner(
    settings: Settings, on_stage: Callable[[str], None] | None = None
) -> tuple[Engine, sessionmaker[Session], JobRunner, str]:
    """What every worker needs: the database, a job runner on the artifact store, and its own id. Sweeps
    orphan bundles first, so a crash never leaves the store and the database disagreeing past a restart.
    ``on_stage``: told each stage a job reaches (``service.jobs.training.STAGES``); None in production."""
    from model_core.quantize import QuantConfig, kernels_for
    from service.jobs.int8 import Int8Tolerance
    from service.jobs.training import JobRunner  # torch is imported here, in the worker process only

    engine = make_engine(settings.db_url)
    sessions = make_sessionmaker(engine)
    store = open_store(settings.artifacts_path, settings.artifacts_url)
    sweep_orphans(sessions, store)
    runner = JobRunner(sessions, store, settings.device, cache_dir=settings.graph_cache_path,
                       max_steps=settings.max_train_steps, on_stage=on_stage, novelty=settings.novelty,
                       shared_backbone=settings.shared_backbone, shared_content=settings.shared_content,
                       int8=settings.int8_backbone, gate_suite_samples=settings.gate_suite_samples,
                       feature_threads=settings.ort_threads,
                       int8_tolerance=Int8Tolerance(settings.int8_max_accuracy_drop, settings.int8_max_disagreement),
                       int8_config=QuantConfig(float_nodes=settings.int8_float_nodes),
                       int8_shared=settings.int8_calibration == "deployment",
                       int8_kernels=kernels_for(settings.int8_kernels))  # fmt: skip
    return engine, sessions, runner, f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
