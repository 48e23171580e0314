"""NOTIFY engram_jobs when a job's visible state changes (PostgreSQL only)

A trigger, as 0003's for the active version: whichever process changes a job (a worker's progress, the gate's
report, a cancel through any replica, the reaper), the API processes streaming that job's events
(``GET /v1/jobs/{id}/events``) hear of it when the change commits, instead of reading the job every half
second. Heartbeats alone do not notify. The payload is the job id. SQLite deployments keep reading.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("""
    CREATE OR REPLACE FUNCTION engram_notify_jobs() RETURNS trigger AS $$
    BEGIN
      IF (NEW.status, NEW.progress::text, NEW.report::text, NEW.error, NEW.version, NEW.cancel_requested)
         IS DISTINCT FROM
         (OLD.status, OLD.progress::text, OLD.report::text, OLD.error, OLD.version, OLD.cancel_requested) THEN
        PERFORM pg_notify('engram_jobs', NEW.id);
      END IF;
      RETURN NEW;
    END $$ LANGUAGE plpgsql
    """)
    op.execute("""
    CREATE TRIGGER engram_notify_jobs AFTER UPDATE ON jobs
    FOR EACH ROW EXECUTE FUNCTION engram_notify_jobs()
    """)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS engram_notify_jobs ON jobs")
    op.execute("DROP FUNCTION IF EXISTS engram_notify_jobs()")
