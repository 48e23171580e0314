"""Database operations on classifiers, versions and jobs; shared by the API and the worker (no torch).

Promotion and rollback only move the classifier's ``active_version`` pointer and the two versions'
statuses, in one transaction; artifacts are never touched.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from service.domain.errors import Conflict, NotFound, PointerMoved
from service.persistence.models import AuditEntry, Classifier, Job, Version, utcnow

__all__ = ["Conflict", "NotFound", "PointerMoved"]  # re-exported: older imports name this module
ACTIVE_JOB = ("running", "evaluating")


def get_classifier(s: Session, name: str) -> Classifier:
    clf = s.scalar(select(Classifier).where(Classifier.name == name))
    if clf is None:
        raise NotFound(f"no classifier named {name!r}")
    return clf


def get_version(s: Session, clf: Classifier, number: int) -> Version:
    v = s.scalar(select(Version).where(Version.classifier_id == clf.id, Version.number == number))
    if v is None:
        raise NotFound(f"classifier {clf.name!r} has no version {number}")
    return v


def next_version_number(s: Session, clf: Classifier) -> int:
    return int(s.scalar(select(func.max(Version.number)).where(Version.classifier_id == clf.id)) or 0) + 1


def set_active(
    s: Session,
    clf: Classifier,
    target: Version,
    action: str,
    actor: str,
    reason: str | None,
    forced: bool,
    expected: int | None,
) -> AuditEntry:
    """Move ``clf``'s pointer from ``expected`` to ``target`` (compare-and-set, in the caller's transaction)
    with its audit entry. Raises ``PointerMoved`` when the pointer is no longer ``expected``: two moves
    racing each other never both land, so there is never a second active version nor a wrong
    ``from_version`` in the audit (the default rollback target is computed from it). Returns the audit
    entry: once flushed, its id is the pointer's generation (``service.application.serving``)."""
    if expected == target.number:
        raise Conflict(f"version {target.number} of {clf.name!r} is already active")
    moved = s.execute(
        update(Classifier)
        .where(Classifier.id == clf.id, Classifier.active_version.is_not_distinct_from(expected))
        .values(active_version=target.number)
        .execution_options(synchronize_session=False)
    )  # fmt: skip
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        current = s.scalar(select(Classifier.active_version).where(Classifier.id == clf.id))
        if current == target.number:
            raise Conflict(f"version {target.number} of {clf.name!r} is already active")
        raise PointerMoved(clf.name, expected, current)
    # The pointer row is now locked by this transaction: the status flips below cannot interleave with
    # another move of the same classifier.
    if expected is not None:
        s.execute(update(Version).where(Version.classifier_id == clf.id, Version.number == expected)
                  .values(status="retired").execution_options(synchronize_session=False))  # fmt: skip
    target.status = "active"
    clf.active_version = target.number
    entry = AuditEntry(classifier_id=clf.id, action=action, actor=actor, from_version=expected,
                       to_version=target.number, reason=reason, forced=forced)  # fmt: skip
    s.add(entry)
    return entry


def previous_active(s: Session, clf: Classifier) -> int | None:
    """The version that was active before the current one (the default rollback target)."""
    return s.scalar(
        select(AuditEntry.from_version)
        .where(AuditEntry.classifier_id == clf.id, AuditEntry.to_version == clf.active_version,
               AuditEntry.from_version.is_not(None))
        .order_by(AuditEntry.id.desc()).limit(1)
    )  # fmt: skip


def end_job(job: Job, status: str, error: str | None) -> None:
    """The one way a job ends without a version: status, reason and finish time together (the caller
    commits, then deletes the staged samples of a ``retention: discard`` job)."""
    job.status, job.error, job.finished_at = status, error, utcnow()


def claim_job(s: Session, job_id: str, worker: str) -> bool:
    """Atomically move one queued job to running for ``worker``; False if it is no longer queued."""
    now = utcnow()
    res = s.execute(
        update(Job).where(Job.id == job_id, Job.status == "queued")
        .values(status="running", worker=worker, started_at=now, heartbeat_at=now)
    )  # fmt: skip
    s.commit()
    return bool(res.rowcount == 1)  # type: ignore[attr-defined]


def claim_next_job(s: Session, worker: str) -> str | None:
    """Take the oldest queued job whose classifier has no job running (the embedded SQLite worker)."""
    busy = select(Job.classifier_id).where(Job.status.in_(ACTIVE_JOB))
    candidates = s.scalars(
        select(Job.id).where(Job.status == "queued", Job.classifier_id.not_in(busy)).order_by(Job.created_at).limit(5)
    ).all()
    for job_id in candidates:
        if claim_job(s, job_id, worker):
            return job_id
    return None


def reap_stale_jobs(s: Session, stale_after: float) -> list[Job]:
    """Mark running jobs whose worker stopped sending heartbeats as failed; returns them."""
    limit = utcnow() - dt.timedelta(seconds=stale_after)
    stale = or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < limit)
    dead = list(s.scalars(select(Job).where(Job.status.in_(ACTIVE_JOB), stale)).all())
    for job in dead:
        end_job(job, "failed",
                f"the worker stopped responding (no heartbeat for over {stale_after:.0f} s); it died or was killed")  # fmt: skip
    if dead:
        s.commit()
    return dead


def job_view(job: Job) -> dict[str, Any]:
    return {
        "job_id": job.id, "status": job.status, "task": job.task, "strategy": job.strategy,
        "retention": job.retention, "progress": job.progress, "parent": job.parent, "version": job.version,
        "report": job.report, "error": job.error, "created_at": job.created_at, "started_at": job.started_at,
        "finished_at": job.finished_at, "seconds": job.seconds,
        "worker": job.worker,  # host:pid:id of the worker that took the job
    }  # fmt: skip
