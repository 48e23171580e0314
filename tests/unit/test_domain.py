"""The stored job request (schema versions) and the single-flight session loader."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

import service.application.serving as serving_module
from service.application.metrics import Metrics
from service.application.serving import ServingService, VersionRef
from service.domain.commands import JOB_REQUEST_SCHEMA, JobRequest, TrainOptions
from service.domain.errors import Unavailable
from service.inference.sessions import ServingState
from service.settings import Settings


def test_a_job_request_round_trips_with_its_schema_version() -> None:
    req = JobRequest(TrainOptions(iterations=7, batch_size=3, lr=0.01, seed=5), {"lambda": 2.0}, {"tolerance": 0.1},
                     {"train": 10, "eval": 4}, ["a", "b"])  # fmt: skip
    stored = req.to_stored()
    assert stored["schema"] == JOB_REQUEST_SCHEMA
    assert JobRequest.from_stored(stored) == req


def test_a_request_queued_before_schema_versions_still_reads() -> None:
    legacy = {"options": {"iterations": 50, "batch_size": 64, "lr": 0.001, "seed": 0}, "params": {},
              "gate": {}, "samples": {"train": 8, "eval": 2}, "classes": ["x", "y"]}  # fmt: skip
    assert JobRequest.from_stored(legacy).options == TrainOptions(iterations=50)


def test_a_request_from_a_newer_schema_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="newer than this worker"):
        JobRequest.from_stored({"schema": JOB_REQUEST_SCHEMA + 1})


class _FakeServed:
    def __init__(self, classifier: str, version: int) -> None:
        self.classifier, self.version, self.nbytes = classifier, version, 0


class _WatchedEvent(threading.Event):
    """A threading.Event that counts the threads waiting on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = 0
        self._count = threading.Lock()

    def wait(self, timeout: float | None = None) -> bool:
        with self._count:
            self.waiting += 1
        return super().wait(timeout)


def test_concurrent_loads_of_one_version_build_once_and_a_failure_backs_off(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    builds: list[int] = []
    fail = {"now": False}
    release = threading.Event()
    flights: list[_WatchedEvent] = []

    def held_load(classifier: str, version: int, folder: Path, network: dict[str, Any], options: Any, *_: Any) -> Any:
        builds.append(version)
        assert release.wait(30), "the test never released the load"
        if fail["now"]:
            raise RuntimeError("model.onnx is unreadable")
        return _FakeServed(classifier, version)

    def watched_flight() -> Any:
        flights.append(_WatchedEvent())
        return flight_type(done=flights[-1])

    flight_type = serving_module._Flight
    monkeypatch.setattr(serving_module, "load_served", held_load)
    monkeypatch.setattr(serving_module, "_Flight", watched_flight)
    svc = ServingService(Settings(data_dir=tmp_path), None, None, ServingState(), Metrics())  # type: ignore[arg-type]
    got: list[Any] = []
    threads = [threading.Thread(target=lambda: got.append(svc.load(VersionRef("c", 1, tmp_path, {}))))
               for _ in range(16)]  # fmt: skip
    for t in threads:
        t.start()
    # the load is held until the 15 other threads wait on the one flight: all ask while it builds, by construction
    deadline = time.monotonic() + 30
    while not (len(flights) == 1 and flights[0].waiting == 15):
        assert time.monotonic() < deadline, f"flights {len(flights)}, waiting {[f.waiting for f in flights]}"
        time.sleep(0.01)
    release.set()
    for t in threads:
        t.join(30)
    assert builds == [1] and len(got) == 16 and all(g is got[0] for g in got)

    fail["now"] = True
    with pytest.raises(Unavailable, match="unreadable"):
        svc.load(VersionRef("c", 2, tmp_path, {}))
    with pytest.raises(Unavailable) as again:  # within the backoff: no second attempt
        svc.load(VersionRef("c", 2, tmp_path, {}))
    assert builds == [1, 2] and again.value.retry_after >= 1
