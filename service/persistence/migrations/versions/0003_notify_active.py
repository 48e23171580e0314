"""NOTIFY engram_active when a classifier's active version moves (PostgreSQL only)

A trigger, not application code, so that every move of the pointer announces itself: promotion and
rollback through any replica, a worker's auto-promotion, a fix by hand in psql. The payload is the
classifier's name; PostgreSQL delivers it when the moving transaction commits, and not at all if it rolls
back. Replicas LISTEN (``service.persistence.notify``) and still poll as the fallback.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite deployments have one API process; its own swap needs no message
    op.execute("""
    CREATE OR REPLACE FUNCTION engram_notify_active() RETURNS trigger AS $$
    BEGIN
      IF NEW.active_version IS DISTINCT FROM OLD.active_version THEN
        PERFORM pg_notify('engram_active', NEW.name);
      END IF;
      RETURN NEW;
    END $$ LANGUAGE plpgsql
    """)
    op.execute("""
    CREATE TRIGGER engram_notify_active AFTER UPDATE OF active_version ON classifiers
    FOR EACH ROW EXECUTE FUNCTION engram_notify_active()
    """)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS engram_notify_active ON classifiers")
    op.execute("DROP FUNCTION IF EXISTS engram_notify_active()")
