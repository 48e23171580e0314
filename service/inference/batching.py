"""Dynamic micro-batching for the predict path.

Concurrent predict requests for one served version are queued; a single drain task takes everything
queued (up to ``max_batch`` rows), optionally waits up to ``max_wait`` seconds for more, then in one
worker thread decodes every request's inputs and runs the model once on the concatenated rows, and hands
each request its own rows back. Decoding in the batch's thread keeps it off the event loop without a
thread hop per request. While one batch runs, the next one gathers, so under load batches form without
any added wait; with one client a request waits at most ``max_wait``.

A request with more rows than ``max_batch`` runs alone; a batch never splits a request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import numpy as np

RunFn = Callable[[np.ndarray], np.ndarray]
PrepareFn = Callable[[Any], np.ndarray]


def _as_array(payload: Any) -> np.ndarray:
    return np.asarray(payload)


@dataclass
class BatchStats:
    """Running totals (requests served, rows run)."""

    rows: int = 0
    requests: int = 0


@dataclass
class _Pending:
    payload: Any
    rows: int
    future: asyncio.Future[tuple[np.ndarray, int]]


class MicroBatcher:
    """``run`` maps (N, ...) inputs to (N, ...) outputs; ``prepare`` turns one request's payload into its
    input rows (decoding, validation). Both run in a worker thread, never on the event loop. A payload
    that ``prepare`` refuses fails its own request only."""

    def __init__(self, run: RunFn, max_batch: int = 64, max_wait: float = 0.0, prepare: PrepareFn = _as_array) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if max_wait < 0:
            raise ValueError("max_wait must be >= 0")
        self._run = run
        self._prepare = prepare
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.stats = BatchStats()
        self._pending: deque[_Pending] = deque()
        self._pending_rows = 0
        self._full = asyncio.Event()  # set when the queue holds a full batch (binds to a loop on first use)
        self._drainer: asyncio.Task[None] | None = None

    async def submit(self, payload: Any) -> tuple[np.ndarray, int]:
        """Prepare ``payload`` (``len(payload)`` input rows) and run the model on it as part of a batch.
        Returns its output rows and the number of rows in the model run that served it."""
        loop = asyncio.get_running_loop()
        item = _Pending(payload, len(payload), loop.create_future())
        self._pending.append(item)
        self._pending_rows += item.rows
        if self._pending_rows >= self.max_batch:
            self._full.set()
        if self._drainer is None or self._drainer.done():
            self._drainer = loop.create_task(self._drain())
        return await item.future

    def _take(self) -> list[_Pending]:
        """Pop queued requests up to max_batch rows (always at least one)."""
        batch = [self._pending.popleft()]
        rows = batch[0].rows
        while self._pending and rows + self._pending[0].rows <= self.max_batch:
            item = self._pending.popleft()
            batch.append(item)
            rows += item.rows
        self._pending_rows -= rows
        return batch

    def _work(self, payloads: list[Any]) -> tuple[list[np.ndarray | BaseException], np.ndarray | None]:
        """In a worker thread: prepare each payload, then one model run over all that prepared."""
        parts: list[np.ndarray | BaseException] = []
        for payload in payloads:
            try:
                parts.append(self._prepare(payload))
            except Exception as exc:
                parts.append(exc)
        good = [p for p in parts if isinstance(p, np.ndarray)]
        if not good:
            return parts, None
        return parts, self._run(good[0] if len(good) == 1 else np.concatenate(good))

    async def _drain(self) -> None:
        while self._pending:
            if self.max_wait > 0 and self._pending_rows < self.max_batch:
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.max_wait)
            batch = [item for item in self._take() if not item.future.cancelled()]
            if not batch:
                continue
            try:
                parts, out = await anyio.to_thread.run_sync(self._work, [item.payload for item in batch])
            except Exception as exc:  # the model run failed: every request in the batch gets the error
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            run_rows = 0 if out is None else len(out)
            self.stats.rows += run_rows
            self.stats.requests += len(batch)
            start = 0
            for item, part in zip(batch, parts, strict=True):
                if item.future.done():
                    start += 0 if isinstance(part, BaseException) else len(part)
                elif isinstance(part, BaseException):
                    item.future.set_exception(part)
                else:
                    assert out is not None
                    item.future.set_result((out[start : start + len(part)], run_rows))
                    start += len(part)
