"""Database models (SQLAlchemy 2) and the engine/session factory. Schema changes go through Alembic."""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp column that always reads back as an aware UTC datetime (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        list[Any]: JSON,
    }


class Classifier(Base):
    __tablename__ = "classifiers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    network: Mapped[dict[str, Any]]  # NetworkSpec.to_dict()
    gate: Mapped[dict[str, Any]]  # gate defaults: tolerance, new_task_floor, manual_approval, holdout
    # novelty settings: known_rate, capture, capture_max, capture_max_age_hours (service.domain.unknowns)
    unknowns: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    active_version: Mapped[int | None] = mapped_column(Integer, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # the classifier's retention policy (service.domain.retention); None: the deployment's default
    retention: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class Version(Base):
    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("classifier_id", "number"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    classifier_id: Mapped[int] = mapped_column(ForeignKey("classifiers.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))  # candidate, active, rejected, retired, pruned (files gone)
    parent: Mapped[int | None] = mapped_column(Integer, default=None)
    strategy: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]]
    labels: Mapped[list[Any]]
    tasks: Mapped[list[Any]]
    report: Mapped[dict[str, Any]]
    artifact: Mapped[str] = mapped_column(String(512))  # bundle folder, relative to the artifact root
    job_id: Mapped[str | None] = mapped_column(String(36), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    classifier_id: Mapped[int] = mapped_column(ForeignKey("classifiers.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)  # service.domain.job_status: JobStatus, its groups
    task: Mapped[str] = mapped_column(String(128))
    strategy: Mapped[str] = mapped_column(String(32))
    retention: Mapped[str] = mapped_column(String(8))
    request: Mapped[dict[str, Any]]  # options, strategy params, gate overrides, sample counts
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    parent: Mapped[int | None] = mapped_column(Integer, default=None)
    version: Mapped[int | None] = mapped_column(Integer, default=None)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker: Mapped[str | None] = mapped_column(String(128), default=None)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    seconds: Mapped[dict[str, Any]] = mapped_column(default=dict)  # time per stage


class CapturedInput(Base):
    """An input a served version flagged as unknown, kept (``capture``) until exported or expired."""

    __tablename__ = "captured_inputs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    classifier_id: Mapped[int] = mapped_column(ForeignKey("classifiers.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    novelty: Mapped[float] = mapped_column(Float)
    data: Mapped[bytes] = mapped_column(LargeBinary)  # the model's input row as .npy bytes
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class AuditEntry(Base):
    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    classifier_id: Mapped[int] = mapped_column(ForeignKey("classifiers.id"), index=True)
    action: Mapped[str] = mapped_column(String(32))  # promote, rollback, auto-promote, prune
    actor: Mapped[str] = mapped_column(String(64))  # role and key fingerprint, never the key
    from_version: Mapped[int | None] = mapped_column(Integer, default=None)
    to_version: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    forced: Mapped[bool] = mapped_column(Boolean, default=False)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class LifecycleEvent(Base):
    """A prune, deletion, import or restore, by classifier name: the deployment's record, which outlives a deleted
    classifier (whose own audit rows go with it)."""

    __tablename__ = "lifecycle_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    classifier: Mapped[str] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(32))  # prune, delete, import, restore
    actor: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]]  # what was pruned, deleted or restored, and the bytes it freed
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


def make_engine(url: str) -> Engine:
    """An engine; SQLite gets WAL, a busy timeout and foreign keys so server and worker share it."""
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})  # busy timeout 30 s

        @event.listens_for(engine, "connect")
        def _pragmas(conn: Any, _: Any) -> None:
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def make_sessionmaker(engine: Engine) -> sessionmaker[Any]:
    return sessionmaker(engine, expire_on_commit=False)
