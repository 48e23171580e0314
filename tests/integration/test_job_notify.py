"""A job's visible changes are announced on PostgreSQL (migration 0004: NOTIFY engram_jobs, the job id), so the
API processes streaming its events read it when told; heartbeats alone say nothing. And ``JobWatch`` wakes the
streams of the job named, and only those."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import update

from service.persistence.migrations import upgrade
from service.persistence.models import Classifier, Job, make_engine, make_sessionmaker, utcnow
from service.persistence.notify import JOBS_CHANNEL, JobWatch, listen_url
from tests.conftest import throwaway_pg

pytestmark = pytest.mark.timeout(120)


def _notes(conn: object, wait: float) -> list[str]:
    return [n.payload for n in conn.notifies(timeout=wait, stop_after=1)]  # type: ignore[attr-defined]


def test_a_job_change_notifies_its_id_and_a_heartbeat_does_not() -> None:
    import psycopg

    with throwaway_pg("engram_jobnotify") as url:
        upgrade(url)
        engine = make_engine(url)
        sessions = make_sessionmaker(engine)
        job_id = str(uuid.uuid4())
        with sessions() as s:
            clf = Classifier(name="c", network={}, gate={})
            s.add(clf)
            s.flush()
            s.add(Job(id=job_id, classifier_id=clf.id, status="queued", task="t", strategy="joint", retention="keep",
                      request={}))  # fmt: skip
            s.commit()
        conninfo = listen_url(url)
        assert conninfo is not None
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f"LISTEN {JOBS_CHANNEL}")
            with sessions() as s:
                s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow()))
                s.commit()
            assert _notes(conn, 1.0) == []  # a heartbeat is not a change anyone streams
            with sessions() as s:
                s.execute(update(Job).where(Job.id == job_id).values(status="running", progress={"step": 1}))
                s.commit()
            assert _notes(conn, 10.0) == [job_id]
        engine.dispose()


def test_job_watch_wakes_the_streams_of_the_job_named() -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        watch = JobWatch()
        with watch.watch("a") as a, watch.watch("b") as b:
            watch.notify("a")
            await a.wait(5.0)
            woke_a = a.last is not None
            woke_b = b.last is not None
            watch.notify("")  # after a reconnection: every stream reads its job again
            await b.wait(5.0)
            return woke_a, woke_b, b.last is not None

    assert asyncio.run(scenario()) == (True, False, True)
