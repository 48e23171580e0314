"""Database operations on classifiers, versions and jobs; shared by the API and the worker (no torch).

Every query and state transition of the application services lives here, as a named function over the
caller's session: the services keep the transaction boundaries (open a session, call these, commit).

Promotion and rollback only move the classifier's ``active_version`` pointer and the two versions'
statuses, in one transaction; artifacts are never touched.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import delete, func, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.domain.errors import Conflict, Gone, NotFound, PointerMoved
from service.domain.job_status import ACTIVE, LIVE
from service.persistence.models import AuditEntry, CapturedInput, Classifier, Job, LifecycleEvent, Version, utcnow

__all__ = ["Conflict", "NotFound", "PointerMoved"]  # re-exported: older imports name this module


def ping(s: Session) -> None:
    """Raise if the database does not answer."""
    s.execute(text("SELECT 1"))


# --- classifiers ------------------------------------------------------------------------------------


def add_classifier(
    s: Session, name: str, network: dict[str, Any], gate: dict[str, Any], unknowns: dict[str, Any] | None = None
) -> Classifier:
    """A new classifier (flushed, the caller commits); ``Conflict`` if the name is taken, also when two
    requests race (the unique name)."""
    clf = Classifier(name=name, network=network, gate=gate, unknowns=unknowns or {})
    s.add(clf)
    try:
        s.flush()
    except IntegrityError:
        raise Conflict(f"a classifier named {name!r} already exists") from None
    return clf


def list_classifiers(s: Session) -> list[Classifier]:
    return list(s.scalars(select(Classifier).order_by(Classifier.name)))


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


def list_versions(s: Session, clf: Classifier) -> list[Version]:
    return list(s.scalars(select(Version).where(Version.classifier_id == clf.id).order_by(Version.number)))


def list_audit(s: Session, clf: Classifier) -> list[AuditEntry]:
    return list(s.scalars(select(AuditEntry).where(AuditEntry.classifier_id == clf.id).order_by(AuditEntry.id)))


def active_pointers(s: Session, classifier_id: int | None = None) -> list[tuple[Classifier, Version, int]]:
    """Each classifier with an active version (or only ``classifier_id``): the classifier, its active version
    and the pointer's generation, the id of its latest audit entry (0 if none; ``service.application.serving``)."""
    gen = (select(AuditEntry.classifier_id, func.max(AuditEntry.id).label("gen"))
           .group_by(AuditEntry.classifier_id).subquery())  # fmt: skip
    query = (
        select(Classifier, Version, func.coalesce(gen.c.gen, 0))
        .join(Version, (Version.classifier_id == Classifier.id) & (Version.number == Classifier.active_version))
        .outerjoin(gen, gen.c.classifier_id == Classifier.id)
    )  # fmt: skip
    if classifier_id is not None:
        query = query.where(Classifier.id == classifier_id)
    return [(clf, v, generation) for clf, v, generation in s.execute(query).all()]


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
    # another move of the same classifier, nor with a prune of it (``lock_classifier``), whose marks are read now.
    if s.scalar(select(Version.status).where(Version.id == target.id)) == "pruned":
        raise Gone(f"version {target.number} of {clf.name!r} was pruned by the retention policy: its files are gone")
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


# --- jobs -------------------------------------------------------------------------------------------


def add_job(
    s: Session,
    job_id: str,
    clf: Classifier,
    task: str,
    strategy: str,
    retention: str,
    request: dict[str, Any],
) -> Job:
    """A new ``queued`` job of ``clf`` (added; the caller commits)."""
    job = Job(id=job_id, classifier_id=clf.id, status="queued", task=task, strategy=strategy,
              retention=retention, request=request, progress={}, seconds={})  # fmt: skip
    s.add(job)
    return job


def get_job(s: Session, job_id: str) -> Job:
    job = s.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job {job_id!r}")
    return job


def recent_jobs(s: Session, clf: Classifier, limit: int) -> list[Job]:
    """``clf``'s latest ``limit`` jobs, newest first."""
    return list(s.scalars(
        select(Job).where(Job.classifier_id == clf.id).order_by(Job.created_at.desc()).limit(limit)
    ))  # fmt: skip


def jobs_finished_since(s: Session, since: dt.datetime) -> list[tuple[Job, str]]:
    """Jobs that ended after ``since``, with their classifier's name, in the order they ended."""
    rows = s.execute(
        select(Job, Classifier.name)
        .join(Classifier, Classifier.id == Job.classifier_id)
        .where(Job.finished_at.is_not(None), Job.finished_at > since)
        .order_by(Job.finished_at)
    ).all()
    return [(job, name) for job, name in rows]


def cancel_job(job: Job) -> None:
    """Cancel a queued job now, or ask a running one to stop (its worker ends it); ``Conflict`` once it
    ended. The caller commits."""
    if job.status == "queued":
        end_job(job, "cancelled", "cancelled before it started")
    elif job.status in ACTIVE:
        job.cancel_requested = True
    else:
        raise Conflict(f"job {job.id} already ended as {job.status!r}")


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
    busy = select(Job.classifier_id).where(Job.status.in_(ACTIVE))
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
    dead = list(s.scalars(select(Job).where(Job.status.in_(ACTIVE), stale)).all())
    for job in dead:
        end_job(job, "failed",
                f"the worker stopped responding (no heartbeat for over {stale_after:.0f} s); it died or was killed")  # fmt: skip
    if dead:
        s.commit()
    return dead


def add_captured(s: Session, classifier_id: int, version: int, rows: list[tuple[float, bytes]], keep: int,
                 max_age_hours: float) -> None:  # fmt: skip
    """Keep inputs flagged unknown, then drop what is beyond the classifier's bounds: older than ``max_age_hours``,
    or more than ``keep`` (the oldest first)."""
    for novelty, data in rows:
        s.add(CapturedInput(classifier_id=classifier_id, version=version, novelty=novelty, data=data))
    s.flush()
    expire_captured(s, classifier_id, max_age_hours)
    newest = select(CapturedInput.id).where(CapturedInput.classifier_id == classifier_id)
    cutoff = s.scalar(newest.order_by(CapturedInput.id.desc()).offset(keep).limit(1))
    if cutoff is not None:
        s.execute(delete(CapturedInput).where(CapturedInput.classifier_id == classifier_id,
                                              CapturedInput.id <= cutoff))  # fmt: skip


def expire_captured(s: Session, classifier_id: int, max_age_hours: float) -> None:
    """Delete the classifier's captured inputs older than ``max_age_hours``."""
    expired = utcnow() - dt.timedelta(hours=max_age_hours)
    s.execute(delete(CapturedInput).where(CapturedInput.classifier_id == classifier_id,
                                          CapturedInput.created_at < expired))  # fmt: skip


def list_captured(s: Session, clf: Classifier) -> list[CapturedInput]:
    """The classifier's captured inputs, oldest first."""
    q = select(CapturedInput).where(CapturedInput.classifier_id == clf.id)
    return list(s.scalars(q.order_by(CapturedInput.id)))


def delete_captured(s: Session, clf: Classifier, through_id: int) -> int:
    """Delete the classifier's captured inputs up to ``through_id`` (exported); returns how many."""
    result = s.execute(delete(CapturedInput).where(CapturedInput.classifier_id == clf.id,
                                                   CapturedInput.id <= through_id))  # fmt: skip
    return int(getattr(result, "rowcount", 0) or 0)


# --- lifecycle: retention, deletion, archives (service.application.lifecycle, service.application.archive) -----


def lock_classifier(s: Session, clf: Classifier) -> None:
    """Take the classifier's row lock for the rest of the caller's transaction (PostgreSQL: a row lock; SQLite: the
    database's write lock), as a pointer move's compare-and-set does: a prune and a move of one classifier never
    interleave."""
    s.execute(update(Classifier).where(Classifier.id == clf.id).values(active_version=Classifier.active_version)
              .execution_options(synchronize_session=False))  # fmt: skip


def pointer_moves(s: Session, clf: Classifier) -> list[AuditEntry]:
    """The audit entries that moved ``clf``'s pointer (promote, rollback, auto-promote), oldest first."""
    return list(s.scalars(select(AuditEntry).where(AuditEntry.classifier_id == clf.id,
                                                    AuditEntry.action.in_(("promote", "rollback", "auto-promote")))
                          .order_by(AuditEntry.id)))  # fmt: skip


def live_jobs(s: Session, clf: Classifier | None = None) -> list[Job]:
    """Jobs not ended yet (queued, running, evaluating): of ``clf``, or of every classifier."""
    query = select(Job).where(Job.status.in_(LIVE))
    if clf is not None:
        query = query.where(Job.classifier_id == clf.id)
    return list(s.scalars(query.order_by(Job.created_at)))


def mark_pruned(s: Session, clf: Classifier, number: int, status: str, actor: str, reason: str) -> bool:
    """Mark a version pruned if its status is still ``status`` and it is not active, with its audit entry; False
    when it changed meanwhile (kept then). Call under ``lock_classifier``."""
    moved = s.execute(update(Version).where(Version.classifier_id == clf.id, Version.number == number,
                                            Version.status == status, Version.status != "active")
                      .values(status="pruned").execution_options(synchronize_session=False))  # fmt: skip
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        return False
    s.add(AuditEntry(classifier_id=clf.id, action="prune", actor=actor, from_version=None, to_version=number,
                     reason=reason, forced=False))  # fmt: skip
    return True


def kept_versions(s: Session) -> list[tuple[str, Version]]:
    """Every version whose files are kept (not pruned), of every classifier, with its classifier's name."""
    rows = s.execute(select(Classifier.name, Version).join(Version, Version.classifier_id == Classifier.id)
                     .where(Version.status != "pruned").order_by(Classifier.name, Version.number)).all()  # fmt: skip
    return [(name, v) for name, v in rows]


def delete_classifier(s: Session, clf: Classifier) -> list[str]:
    """Delete the classifier's rows: captured inputs, audit, versions, jobs, then itself (the caller commits).
    Returns its jobs' ids (their staged arrays go next). ``Conflict`` while a job of it is live."""
    live = live_jobs(s, clf)
    if live:
        raise Conflict(f"classifier {clf.name!r} has a job that has not ended ({live[0].id}, {live[0].status}); "
                       "cancel it or wait for it, then delete")  # fmt: skip
    job_ids = list(s.scalars(select(Job.id).where(Job.classifier_id == clf.id)))
    for table in (CapturedInput, AuditEntry, Version, Job):
        s.execute(delete(table).where(table.classifier_id == clf.id))
    s.execute(delete(Classifier).where(Classifier.id == clf.id))
    return job_ids


def add_event(s: Session, classifier: str, action: str, actor: str, detail: dict[str, Any]) -> LifecycleEvent:
    """Record a prune, deletion, import or restore in the deployment's lifecycle log (the caller commits)."""
    event = LifecycleEvent(classifier=classifier, action=action, actor=actor, detail=detail)
    s.add(event)
    return event


def list_events(s: Session, classifier: str | None = None, limit: int = 200) -> list[LifecycleEvent]:
    """The lifecycle log, newest first: of one classifier name, or of every one."""
    query = select(LifecycleEvent)
    if classifier is not None:
        query = query.where(LifecycleEvent.classifier == classifier)
    return list(s.scalars(query.order_by(LifecycleEvent.id.desc()).limit(limit)))
