"""Database operations on classifiers, versions and jobs; shared by the API and the worker (no torch).

Promotion and rollback only move the classifier's ``active_version`` pointer and the two versions'
statuses, in one transaction; artifacts are never touched.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.db import AuditEntry, Classifier, Job, Version, utcnow

ACTIVE_JOB = ("running", "evaluating")


class NotFound(LookupError):
    """A classifier, version or job does not exist."""


class Conflict(RuntimeError):
    """The request is well formed but the current state forbids it."""


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
    s: Session, clf: Classifier, target: Version, action: str, actor: str, reason: str | None, forced: bool
) -> None:
    """Point ``clf`` at ``target`` (within the caller's transaction) and write the audit entry."""
    previous = clf.active_version
    if previous == target.number:
        raise Conflict(f"version {target.number} of {clf.name!r} is already active")
    if previous is not None:
        old = get_version(s, clf, previous)
        old.status = "retired"
    target.status = "active"
    clf.active_version = target.number
    s.add(AuditEntry(classifier_id=clf.id, action=action, actor=actor, from_version=previous, to_version=target.number,
                     reason=reason, forced=forced))  # fmt: skip


def previous_active(s: Session, clf: Classifier) -> int | None:
    """The version that was active before the current one (the default rollback target)."""
    entries = s.scalars(
        select(AuditEntry).where(AuditEntry.classifier_id == clf.id).order_by(AuditEntry.id.desc())
    ).all()
    for entry in entries:
        if entry.to_version == clf.active_version and entry.from_version is not None:
            return entry.from_version
    return None


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
    jobs = list(s.scalars(select(Job).where(Job.status.in_(ACTIVE_JOB))).all())
    dead = []
    for job in jobs:
        if job.heartbeat_at is None or job.heartbeat_at < limit:
            job.status = "failed"
            job.error = (
                f"the worker stopped responding (no heartbeat for over {stale_after:.0f} s); it died or was killed"
            )
            job.finished_at = utcnow()
            dead.append(job)
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
