"""MicroBatcher: concurrent requests share model runs, each gets exactly its own rows back."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from service.inference.batching import MicroBatcher


class Recorder:
    """A fake model: returns 2*x and records the batch sizes it was called with."""

    def __init__(self, delay: float = 0.0, fail_on: int | None = None) -> None:
        self.calls: list[int] = []
        self.delay = delay
        self.fail_on = fail_on
        self.lock = threading.Lock()
        self.concurrent = 0
        self.max_concurrent = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self.lock:
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            self.calls.append(len(x))
            if self.delay:
                time.sleep(self.delay)
            if self.fail_on is not None and self.fail_on in x[:, 0]:
                raise RuntimeError("model failed")
            return x * 2
        finally:
            with self.lock:
                self.concurrent -= 1


def rows(start: int, n: int) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.float32)[:, None].repeat(3, axis=1)


async def submit_all(b: MicroBatcher, sizes: list[int]) -> list[tuple[np.ndarray, int]]:
    starts = np.cumsum([0, *sizes[:-1]]).tolist()
    return await asyncio.gather(*(b.submit(rows(int(s) * 10, n)) for s, n in zip(starts, sizes, strict=True)))


def test_concurrent_requests_are_batched_and_get_their_own_rows() -> None:
    model = Recorder(delay=0.02)
    b = MicroBatcher(model, max_batch=16)
    sizes = [1, 3, 2, 1, 5, 1, 1, 4, 2, 1] * 3
    results = asyncio.run(submit_all(b, sizes))
    starts = np.cumsum([0, *sizes[:-1]]).tolist()
    for (out, run_rows), s, n in zip(results, starts, sizes, strict=True):
        np.testing.assert_array_equal(out, rows(int(s) * 10, n) * 2)
        assert n <= run_rows <= 16
    assert sum(model.calls) == sum(sizes)
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


def test_max_wait_gathers_requests_that_arrive_a_little_later() -> None:
    async def staggered(b: MicroBatcher) -> None:
        async def later(i: int) -> tuple[np.ndarray, int]:
            await asyncio.sleep(0.005 * i)
            return await b.submit(rows(i, 1))

        await asyncio.gather(*(later(i) for i in range(4)))

    eager, patient = Recorder(), Recorder()
    asyncio.run(staggered(MicroBatcher(eager, max_batch=8, max_wait=0.0)))
    asyncio.run(staggered(MicroBatcher(patient, max_batch=8, max_wait=0.2)))
    assert eager.calls == [1, 1, 1, 1]  # nothing queued when each arrives: no batching without a wait
    assert patient.calls == [4]


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
    model = Recorder(delay=0.01, fail_on=0)
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
