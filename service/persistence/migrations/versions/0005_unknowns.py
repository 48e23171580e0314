"""Unknown inputs: each classifier's novelty settings, and the inputs it captured as unknown

``classifiers.unknowns`` holds the known rate the novelty threshold is calibrated at and whether (and how many,
for how long) inputs flagged unknown are kept; ``captured_inputs`` keeps them until exported or expired.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("classifiers") as batch:
        batch.add_column(sa.Column("unknowns", sa.JSON(), nullable=False, server_default="{}"))
    op.create_table(
        "captured_inputs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("classifier_id", sa.Integer(), sa.ForeignKey("classifiers.id", ondelete="CASCADE"), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("novelty", sa.Float(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_captured_inputs_classifier_id", "captured_inputs", ["classifier_id"])
    op.create_index("ix_captured_inputs_created_at", "captured_inputs", ["created_at"])


def downgrade() -> None:
    op.drop_table("captured_inputs")
    with op.batch_alter_table("classifiers") as batch:
        batch.drop_column("unknowns")
