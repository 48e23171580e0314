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
from typing import Any, cast

import anyio.to_thread
import numpy as np

RunFn = Callable[[np.ndarray], np.ndarray]
PrepareFn = Callable[[Any], np.ndarray]
# (the payloads that prepared, the model's output rows of each) -> each one's result: a second stage run per
# batch after the model, e.g. every served version's head on the features a shared backbone computed once
FinishFn = Callable[[list[Any], list[np.ndarray]], list[np.ndarray]]


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
    input rows (decoding, validation); ``finish``, when given, maps each request's output rows to its result.
    All run in a worker thread, never on the event loop. A payload that ``prepare`` refuses fails its own
    request only."""

    def __init__(self, run: RunFn, max_batch: int = 64, max_wait: float = 0.0, prepare: PrepareFn = _as_array,
                 finish: FinishFn | None = None) -> None:  # fmt: skip
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if max_wait < 0:
            raise ValueError("max_wait must be >= 0")
        self._run = run
        self._prepare = prepare
        self._finish = finish
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

    def _work(self, payloads: list[Any]) -> tuple[list[np.ndarray | BaseException], int]:
        """In a worker thread: prepare each payload, then one model run over all that prepared; returns each
        payload's output rows (or why it failed) and the rows of the model run."""
        parts: list[np.ndarray | BaseException] = []
        for payload in payloads:
            try:
                parts.append(self._prepare(payload))
            except Exception as exc:
                parts.append(exc)
        good = [i for i, p in enumerate(parts) if isinstance(p, np.ndarray)]
        if not good:
            return parts, 0
        rows = [cast(np.ndarray, parts[i]) for i in good]
        out = self._run(rows[0] if len(rows) == 1 else np.concatenate(rows))
        outs, start = [], 0
        for r in rows:
            outs.append(out[start : start + len(r)])
            start += len(r)
        if self._finish is not None:
            outs = self._finish([payloads[i] for i in good], outs)
        for i, o in zip(good, outs, strict=True):
            parts[i] = o
        return parts, len(out)

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
                parts, run_rows = await anyio.to_thread.run_sync(self._work, [item.payload for item in batch])
            except Exception as exc:  # the model run failed: every request in the batch gets the error
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            self.stats.rows += run_rows
            self.stats.requests += len(batch)
            for item, part in zip(batch, parts, strict=True):
                if item.future.done():
                    continue
                if isinstance(part, BaseException):
                    item.future.set_exception(part)
                else:
                    item.future.set_result((part, run_rows))
