"""initial schema: classifiers, versions, jobs, audit

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "classifiers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("network", sa.JSON, nullable=False),
        sa.Column("gate", sa.JSON, nullable=False),
        sa.Column("active_version", sa.Integer, nullable=True),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "versions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("classifier_id", sa.Integer, sa.ForeignKey("classifiers.id"), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("parent", sa.Integer, nullable=True),
        sa.Column("strategy", sa.String(32), nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("tasks", sa.JSON, nullable=False),
        sa.Column("report", sa.JSON, nullable=False),
        sa.Column("artifact", sa.String(512), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("classifier_id", "number"),
    )
    op.create_index("ix_versions_classifier_id", "versions", ["classifier_id"])
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("classifier_id", sa.Integer, sa.ForeignKey("classifiers.id"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("task", sa.String(128), nullable=False),
        sa.Column("strategy", sa.String(32), nullable=False),
        sa.Column("retention", sa.String(8), nullable=False),
        sa.Column("request", sa.JSON, nullable=False),
        sa.Column("progress", sa.JSON, nullable=False),
        sa.Column("parent", sa.Integer, nullable=True),
        sa.Column("version", sa.Integer, nullable=True),
        sa.Column("report", sa.JSON, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("worker", sa.String(128), nullable=True),
        sa.Column("heartbeat_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("seconds", sa.JSON, nullable=False),
    )
    op.create_index("ix_jobs_classifier_id", "jobs", ["classifier_id"])
    op.create_index("ix_jobs_status", "jobs", ["status"])
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("classifier_id", sa.Integer, sa.ForeignKey("classifiers.id"), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("from_version", sa.Integer, nullable=True),
        sa.Column("to_version", sa.Integer, nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("forced", sa.Boolean, nullable=False),
        sa.Column("at", TS, nullable=False),
    )
    op.create_index("ix_audit_classifier_id", "audit", ["classifier_id"])


def downgrade() -> None:
    op.drop_table("audit")
    op.drop_table("jobs")
    op.drop_table("versions")
    op.drop_table("classifiers")
