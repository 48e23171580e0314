"""A classifier's life after its versions: retention policies and the deployment's lifecycle log

``classifiers.retention`` holds the classifier's own retention policy (NULL: the deployment's default,
``service.domain.retention``); ``lifecycle_events`` records prunes, deletions, imports and restores by classifier
name, so the record of a deleted classifier outlives it (its own audit rows go with it).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("classifiers") as batch:
        batch.add_column(sa.Column("retention", sa.JSON(), nullable=True))
    op.create_table(
        "lifecycle_events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("classifier", sa.String(64), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_lifecycle_events_classifier", "lifecycle_events", ["classifier"])


def downgrade() -> None:
    op.drop_table("lifecycle_events")
    with op.batch_alter_table("classifiers") as batch:
        batch.drop_column("retention")
