"""Instant fan-out of promotions, rollbacks and job changes on PostgreSQL: LISTEN engram_active, engram_jobs.

Migration 0003 makes PostgreSQL NOTIFY ``engram_active`` (payload: the classifier's name) whenever a
classifier's active version moves, delivered when the moving transaction commits. Each API process keeps
one autocommit connection listening in a daemon thread and wakes its serving sync at once, so a replica
serves the new version within a few milliseconds plus the session build, instead of within
``ENGRAM_SERVING_POLL_SECONDS``. The poll stays as the fallback: a lost connection (reconnected with
backoff) or a notification missed meanwhile is caught by the next poll. SQLite deployments do not listen.

Migration 0004 makes it NOTIFY ``engram_jobs`` (payload: the job id) when a job's visible state changes; a
process streaming that job's events (``JobWatch``) reads the job when told, and reads it every few seconds
only as the fallback.

On SQLite there is no NOTIFY: ``JobBell`` and ``ring`` wake the polling worker through a Unix datagram socket
when the API queues a job, so a job starts within milliseconds rather than within ``ENGRAM_WORKER_POLL_SECONDS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy.engine import make_url

from service.retry import backoff

log = logging.getLogger("engram.notify")
CHANNEL = "engram_active"  # payload: a classifier whose active version moved (migration 0003)
JOBS_CHANNEL = "engram_jobs"  # payload: a job whose visible state changed (migration 0004)
RECONNECT_FIRST, RECONNECT_MAX = 0.5, 30.0  # seconds between reconnection attempts; doubles up to the max


def listen_url(db_url: str) -> str | None:
    """psycopg's connection string for a SQLAlchemy PostgreSQL URL; None for other databases."""
    url = make_url(db_url)
    if url.get_backend_name() != "postgresql":
        return None
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class Listener:
    """Calls ``handlers[channel](payload)`` from its own thread for each notification on its channels; after each
    (re)connection every handler is called once with an empty payload (anything may have changed meanwhile)."""

    def __init__(self, db_url: str, handlers: dict[str, Callable[[str], None]]) -> None:
        self.conninfo = listen_url(db_url)
        self.handlers = handlers
        self.connected = threading.Event()  # set while LISTEN is in effect (tests and logs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Start listening; False (and nothing started) when the database is not PostgreSQL."""
        if self.conninfo is None:
            return False
        self._thread = threading.Thread(target=self._run, name="engram-listen", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        import psycopg  # only PostgreSQL deployments need it

        assert self.conninfo is not None
        failures = 0
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=10) as conn:
                    for channel in self.handlers:
                        conn.execute(f"LISTEN {channel}")
                    self.connected.set()
                    for handler in self.handlers.values():
                        handler("")  # anything may have moved while we were not listening
                    failures = 0
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):  # returns every 0.5 s to check _stop
                            self.handlers[note.channel](note.payload)
            except Exception as exc:
                if self._stop.is_set():
                    break
                failures += 1
                delay = backoff(failures, RECONNECT_FIRST, RECONNECT_MAX)
                log.warning("LISTEN %s lost (%s: %s); polling until it is back, retry in %.1f s", ", ".join(self.handlers),
                            type(exc).__name__, exc, delay)  # fmt: skip
            finally:
                self.connected.clear()
            self._stop.wait(backoff(max(failures, 1), RECONNECT_FIRST, RECONNECT_MAX))


class Wakeup:
    """An asyncio event another thread can set: the serving sync waits on it, or on its poll interval."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self.last: float | None = None  # time.monotonic() of the last notification

    def notify(self, _classifier: str = "") -> None:
        """Thread-safe."""
        self.last = time.monotonic()
        self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, timeout: float) -> None:
        """Until notified or ``timeout`` seconds have passed; then re-arms."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)
        self._event.clear()


class JobWatch:
    """Which jobs this process streams events of, each with the ``Wakeup`` its stream waits on; ``notify(job_id)``
    (thread-safe, from the listener) wakes the streams of that job, an empty id every stream."""

    def __init__(self) -> None:
        self._streams: dict[str, set[Wakeup]] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def watch(self, job_id: str) -> Iterator[Wakeup]:
        wakeup = Wakeup()
        with self._lock:
            self._streams.setdefault(job_id, set()).add(wakeup)
        try:
            yield wakeup
        finally:
            with self._lock:
                self._streams[job_id].discard(wakeup)
                if not self._streams[job_id]:
                    del self._streams[job_id]

    def notify(self, job_id: str) -> None:
        with self._lock:
            streams = [w for j, ws in self._streams.items() if not job_id or j == job_id for w in ws]
        for wakeup in streams:
            wakeup.notify()


class JobBell:
    """Instant job pick-up on SQLite, where there is no NOTIFY: each polling worker binds a Unix datagram socket in
    ``folder`` (``<data dir>/run``) and waits on it between polls; the API rings every socket there when it queues
    a job (``ring``). A ring lost or never heard (another host, a full socket buffer) costs one poll interval, as
    before; where the socket cannot be bound (no AF_UNIX, a path too long) the worker just polls."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / f"worker-{os.getpid()}.sock"
        self._sock: socket.socket | None = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self.path.unlink(missing_ok=True)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(str(self.path))
            sock.setblocking(False)
            self._sock = sock
        except (OSError, AttributeError) as exc:
            log.info("job bell unavailable (%s); the worker polls", exc)

    def wait(self, timeout: float) -> bool:
        """Until rung or ``timeout`` seconds have passed; True if rung. Drains every ring queued meanwhile."""
        if self._sock is None:
            time.sleep(timeout)
            return False
        ready, _, _ = select.select([self._sock], [], [], timeout)
        rung = False
        while True:
            try:
                self._sock.recv(64)
                rung = True
            except (BlockingIOError, InterruptedError):
                return rung or bool(ready)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self.path.unlink(missing_ok=True)


def ring(folder: Path) -> None:
    """Wake every worker waiting on a ``JobBell`` in ``folder``; sockets of dead workers are removed."""
    try:
        paths = list(folder.glob("worker-*.sock"))
    except OSError:
        return
    if not paths or not hasattr(socket, "AF_UNIX"):
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for path in paths:
            try:
                sock.sendto(b"j", str(path))
            except (ConnectionRefusedError, FileNotFoundError):
                path.unlink(missing_ok=True)  # its worker is gone
            except OSError:
                pass  # a full buffer: the worker has rings queued already
