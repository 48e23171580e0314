"""MicroBatcher: concurrent requests share model runs, each gets exactly its own rows back."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from service.inference.batching import MicroBatcher


class Recorder:
    """A fake model: returns 2*x and records the batch sizes it was called with. With ``hold``, a run sets
    ``running`` and then waits until the test sets ``release``: requests submitted meanwhile queue behind a
    blocked batcher, however fast or slow the machine."""

    def __init__(self, fail_on: int | None = None, hold: bool = False) -> None:
        self.calls: list[int] = []
        self.fail_on = fail_on
        self.lock = threading.Lock()
        self.concurrent = 0
        self.max_concurrent = 0
        self.running = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self.lock:
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            self.calls.append(len(x))
            self.running.set()
            assert self.release.wait(30), "the test never released the model"
            if self.fail_on is not None and self.fail_on in x[:, 0]:
                raise RuntimeError("model failed")
            return x * 2
        finally:
            with self.lock:
                self.concurrent -= 1


def rows(start: int, n: int) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.float32)[:, None].repeat(3, axis=1)


async def until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Yield to the event loop until ``condition()`` holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.001)


async def submit_all(b: MicroBatcher, sizes: list[int]) -> list[tuple[np.ndarray, int]]:
    starts = np.cumsum([0, *sizes[:-1]]).tolist()
    return await asyncio.gather(*(b.submit(rows(int(s) * 10, n)) for s, n in zip(starts, sizes, strict=True)))


def test_concurrent_requests_are_batched_and_get_their_own_rows() -> None:
    model = Recorder()
    b = MicroBatcher(model, max_batch=16)
    sizes = [1, 3, 2, 1, 5, 1, 1, 4, 2, 1] * 3
    results = asyncio.run(submit_all(b, sizes))
    starts = np.cumsum([0, *sizes[:-1]]).tolist()
    for (out, run_rows), s, n in zip(results, starts, sizes, strict=True):
        np.testing.assert_array_equal(out, rows(int(s) * 10, n) * 2)
        assert n <= run_rows <= 16
    assert sum(model.calls) == sum(sizes)
    # all submitted in one step of the event loop, so all are queued before the drainer first runs
    assert len(model.calls) < len(sizes)  # batched, not one run per request
    assert max(model.calls) <= 16
    assert model.max_concurrent == 1  # one run at a time per model
    assert b.stats.requests == len(sizes) and b.stats.rows == sum(sizes)


def test_a_request_larger_than_max_batch_runs_alone() -> None:
    model = Recorder()
    b = MicroBatcher(model, max_batch=4)
    results = asyncio.run(submit_all(b, [2, 10, 1]))
    assert [len(out) for out, _ in results] == [2, 10, 1]
    assert 10 in model.calls and all(c <= 4 or c == 10 for c in model.calls)


def test_requests_that_arrive_while_a_batch_runs_form_the_next_batch_within_max_batch() -> None:
    model = Recorder(hold=True)
    b = MicroBatcher(model, max_batch=4, max_wait=0.0)
    sizes = [2, 2, 1, 3, 4, 1]

    async def go() -> list[tuple[np.ndarray, int]]:
        first = asyncio.ensure_future(b.submit(rows(100, 1)))
        await until(model.running.is_set, "the first batch runs")  # the model now holds the batcher
        later = [asyncio.ensure_future(b.submit(rows(10 * i, n))) for i, n in enumerate(sizes)]
        await asyncio.sleep(0)  # each submit queues its request before its first await
        model.release.set()
        return await asyncio.gather(first, *later)

    first, *later = asyncio.run(asyncio.wait_for(go(), 30))
    np.testing.assert_array_equal(first[0], rows(100, 1) * 2)
    for (out, _), (i, n) in zip(later, enumerate(sizes), strict=True):
        np.testing.assert_array_equal(out, rows(10 * i, n) * 2)
    # queued while the first ran, taken in order in runs of at most max_batch rows, never splitting a request
    assert model.calls == [1, 4, 4, 4, 1]
    assert [run for _, run in later] == [4, 4, 4, 4, 4, 1]


def test_no_batching_without_a_wait_when_nothing_is_queued() -> None:
    model = Recorder()
    b = MicroBatcher(model, max_batch=8, max_wait=0.0)

    async def one_after_another() -> list[int]:
        return [(await b.submit(rows(i, 1)))[1] for i in range(4)]

    assert asyncio.run(asyncio.wait_for(one_after_another(), 30)) == [1, 1, 1, 1]
    assert model.calls == [1, 1, 1, 1]


def test_max_wait_gathers_requests_that_arrive_a_little_later() -> None:
    model = Recorder()
    b = MicroBatcher(model, max_batch=4, max_wait=60.0)  # a full batch ends the wait, long before 60 s

    async def staggered() -> list[tuple[np.ndarray, int]]:
        pending = []
        for i in range(4):  # each arrives in a later step of the event loop, while the drainer waits for more
            pending.append(asyncio.ensure_future(b.submit(rows(i, 1))))
            for _ in range(3):
                await asyncio.sleep(0)
            assert i == 3 or model.calls == []  # still waiting: the batch is not full
        return await asyncio.gather(*pending)

    results = asyncio.run(asyncio.wait_for(staggered(), 30))
    assert model.calls == [4] and [run for _, run in results] == [4, 4, 4, 4]


def test_max_wait_bounds_the_wait_of_a_partial_batch() -> None:
    model = Recorder()
    b = MicroBatcher(model, max_batch=8, max_wait=0.05)

    async def go() -> tuple[float, list[tuple[np.ndarray, int]]]:
        t = time.monotonic()
        results = await asyncio.gather(b.submit(rows(0, 1)), b.submit(rows(1, 2)))
        return time.monotonic() - t, list(results)

    waited, results = asyncio.run(asyncio.wait_for(go(), 30))
    assert model.calls == [3] and [run for _, run in results] == [3, 3]  # submitted together: one batch
    assert waited >= 0.04  # it waited for more (only a lower bound: a loaded machine makes it longer, never shorter)


def test_a_full_batch_does_not_wait() -> None:
    model = Recorder()
    b = MicroBatcher(model, max_batch=4, max_wait=30.0)

    async def go() -> float:
        t = time.perf_counter()
        await submit_all(b, [2, 2])
        return time.perf_counter() - t

    assert asyncio.run(asyncio.wait_for(go(), 10)) < 10
    assert model.calls == [4]


def test_a_failed_run_fails_only_its_own_batch() -> None:
    model = Recorder(fail_on=0)
    b = MicroBatcher(model, max_batch=2)

    async def go() -> list[object]:
        first = asyncio.ensure_future(b.submit(rows(0, 2)))  # its run fails
        await asyncio.sleep(0)
        second = asyncio.ensure_future(b.submit(rows(10, 2)))  # next run, succeeds
        return await asyncio.gather(first, second, return_exceptions=True)

    first, second = asyncio.run(go())
    assert isinstance(first, RuntimeError)
    assert isinstance(second, tuple)
    np.testing.assert_array_equal(second[0], rows(10, 2) * 2)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(Recorder(), max_batch=0)
    with pytest.raises(ValueError, match="max_wait"):
        MicroBatcher(Recorder(), max_wait=-1)


def test_a_payload_that_fails_to_prepare_fails_only_its_own_request() -> None:
    model = Recorder()
    loop_thread: list[int] = []
    prepared_in: list[int] = []

    def prepare(payload: list[float]) -> np.ndarray:
        prepared_in.append(threading.get_ident())
        if any(v < 0 for v in payload):
            raise ValueError("negative input")
        return np.asarray(payload, dtype=np.float32)[:, None]

    b = MicroBatcher(model, max_batch=8, prepare=prepare)

    async def go() -> list[object]:
        loop_thread.append(threading.get_ident())
        return await asyncio.gather(b.submit([1.0, 2.0]), b.submit([-1.0]), b.submit([3.0]), return_exceptions=True)

    good, bad, also_good = asyncio.run(go())
    assert isinstance(bad, ValueError) and "negative" in str(bad)
    assert isinstance(good, tuple) and isinstance(also_good, tuple)
    np.testing.assert_array_equal(good[0][:, 0], [2.0, 4.0])
    np.testing.assert_array_equal(also_good[0][:, 0], [6.0])
    assert good[1] == also_good[1] == 3  # one run of the three good rows
    assert model.calls == [3]
    assert loop_thread[0] not in prepared_in  # decoding never runs on the event loop
