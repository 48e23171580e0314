"""The serving service: which version each classifier serves on this replica, and loading them.

- One build per version (single flight): however many requests and the background sync want a version at
  once, one thread builds its ONNX Runtime session and the others wait for that one.
- No database connection is held while a session is built: the version's folder and network are read in
  a short session first (``VersionRef``).
- Once a version is served, predict never touches the database (the outage test stops it under load).
- A promotion is served once it is reported: reading a job that ended ``promoted`` brings this replica
  up to the classifier's pointer (``follow``) before the job is answered, and an admin move swaps before
  it answers, so a client that saw either and then predicts here gets the new version. The background
  sync (poll, or NOTIFY on PostgreSQL) is only how replicas follow moves nobody here has reported.
- Swaps are ordered by the pointer's generation (the id of its latest audit entry: every move writes one,
  and moves of one classifier commit in that order), so a slow build from an older read never replaces
  a version swapped in from a newer one.
- A version that fails to load is retried with backoff; until then it shows in ``/readyz`` and the
  metrics, and a request that needs it gets 503 with Retry-After rather than a fresh attempt each time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.to_thread
from sqlalchemy.orm import Session, sessionmaker

from service.application.metrics import Metrics
from service.domain.commands import Predict
from service.domain.errors import Conflict, Gone, Invalid, Unavailable
from service.domain.unknowns import UnknownSettings
from service.inference.decoding import DecodeLimits, Decoder
from service.inference.sessions import Served, ServingOptions, ServingState, array_bytes, load_served
from service.persistence import registry
from service.persistence.models import Classifier, Version
from service.retry import backoff
from service.settings import Settings
from service.storage.base import ArtifactStore

log = logging.getLogger("engram.serving")
RETRY_FIRST, RETRY_MAX = 1.0, 60.0  # seconds before retrying a failed load; doubles per failure up to the max


class UnknownRate:
    """Predictions scored and flagged unknown per classifier in time buckets (``bucket`` seconds, the last
    ``keep``), per version: the dashboard's plot beside the version timeline. This replica's own, like /metrics;
    Prometheus's ``engram_unknown_predictions_total`` gives the rate over every replica."""

    def __init__(self, bucket: float = 60.0, keep: int = 120) -> None:
        self.bucket, self.keep = bucket, keep
        self._lock = threading.Lock()
        self._series: dict[str, deque[dict[str, Any]]] = {}

    def record(self, classifier: str, version: int, scored: int, unknown: int) -> None:
        start = time.time() // self.bucket * self.bucket
        with self._lock:
            series = self._series.setdefault(classifier, deque(maxlen=self.keep))
            if not series or series[-1]["start"] != start or series[-1]["version"] != version:
                series.append({"start": start, "version": version, "scored": 0, "unknown": 0})
            series[-1]["scored"] += scored
            series[-1]["unknown"] += unknown

    def series(self, classifier: str) -> list[dict[str, Any]]:
        """Oldest first: start (unix seconds), version, scored, unknown and rate of each bucket."""
        with self._lock:
            rows = [dict(b) for b in self._series.get(classifier, ())]
        return [{**b, "rate": b["unknown"] / b["scored"] if b["scored"] else 0.0} for b in rows]


@dataclass(frozen=True)
class VersionRef:
    """What building a version's session needs, read from the database beforehand."""

    classifier: str
    number: int
    folder: Path
    network: dict[str, Any]


def version_ref(store: ArtifactStore, clf: Classifier, v: Version) -> VersionRef:
    return VersionRef(clf.name, v.number, store.path(v.artifact), dict(clf.network))


@dataclass
class _Flight:
    done: threading.Event = field(default_factory=threading.Event)
    served: Served | None = None
    error: BaseException | None = None


@dataclass
class LoadFailure:
    error: str
    attempts: int
    retry_at: float  # time.monotonic() of the next attempt

    def view(self, number: int) -> dict[str, Any]:
        return {"version": number, "error": self.error, "attempts": self.attempts,
                "retry_in_seconds": round(max(0.0, self.retry_at - time.monotonic()), 1)}  # fmt: skip


class ServingService:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        store: ArtifactStore,
        state: ServingState,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.store = store
        self.state = state
        self.metrics = metrics
        self.options = ServingOptions.from_settings(settings)
        self.decoder = Decoder(DecodeLimits.from_settings(settings))  # bounded, before the batch (its docstring)
        self._lock = threading.Lock()
        self._flights: dict[tuple[str, int], _Flight] = {}
        self._failures: dict[tuple[str, int], LoadFailure] = {}
        self._pointers_seen: dict[str, int] = {}  # the last read active versions (replaced, never mutated)
        self._generations: dict[str, int] = {}  # classifier -> generation of the pointer served (under _lock)
        self.unknown_rate = UnknownRate()
        self._counters: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._unknowns: dict[str, tuple[int, UnknownSettings]] = {}  # classifier -> (id, settings), read with refs

    # --- loading ----------------------------------------------------------------------------------

    def load(self, ref: VersionRef) -> Served:
        """The version's session: cached, or built once however many threads ask at the same time."""
        key = (ref.classifier, ref.number)
        with self._lock:
            cached = self.state.cached(*key)
            if cached is not None:
                return cached
            failure = self._failures.get(key)
            if failure is not None and time.monotonic() < failure.retry_at:
                raise self._unavailable(ref, failure)
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leader:
            flight.done.wait()
            if flight.served is None:
                failure = self._failures.get(key)
                raise self._unavailable(ref, failure) if failure else Unavailable(f"loading {key} failed")
            return flight.served
        try:
            t0 = time.perf_counter()
            served = load_served(ref.classifier, ref.number, ref.folder, ref.network, self.options,
                                 self.state.backbones, self._content_path)  # fmt: skip
            self.metrics.session_builds.labels(ref.classifier).inc()
            log.info("built the session of %s version %d in %.2f s (about %d MB)", ref.classifier, ref.number,
                     time.perf_counter() - t0, served.nbytes // 2**20)  # fmt: skip
            self.state.remember(served)
            flight.served = served
            with self._lock:
                self._failures.pop(key, None)
            return served
        except Exception as exc:
            flight.error = exc
            with self._lock:
                attempts = self._failures[key].attempts + 1 if key in self._failures else 1
                delay = backoff(attempts, RETRY_FIRST, RETRY_MAX)
                failure = self._failures[key] = LoadFailure(f"{type(exc).__name__}: {exc}", attempts,
                                                            time.monotonic() + delay)  # fmt: skip
            self.metrics.session_load_failures.labels(ref.classifier).inc()
            log.exception("cannot load %s version %d (attempt %d); retrying in %.0f s", ref.classifier, ref.number,
                          attempts, delay)  # fmt: skip
            raise self._unavailable(ref, failure) from exc
        finally:
            with self._lock:
                self._flights.pop(key, None)
            flight.done.set()

    def _content_path(self, sha256: str) -> Path:
        """A shared backbone's graph, from the artifact store (downloaded and checked once per host)."""
        return self.store.content_path(sha256)

    @staticmethod
    def _unavailable(ref: VersionRef, failure: LoadFailure) -> Unavailable:
        wait = max(1, round(failure.retry_at - time.monotonic()))
        return Unavailable(f"version {ref.number} of {ref.classifier!r} cannot be loaded ({failure.error}); "
                           f"retried in {wait} s", retry_after=wait)  # fmt: skip

    def load_failures(self) -> dict[str, dict[str, Any]]:
        """Classifier -> its active version that failed to load, for /readyz (only the active ones)."""
        active = self._pointers_seen
        with self._lock:
            return {name: f.view(number) for (name, number), f in self._failures.items()
                    if active.get(name) == number}  # fmt: skip

    # --- following the active pointers -----------------------------------------------------------

    def sync(self) -> None:
        """Follow active pointers moved elsewhere (the worker, another replica): build, then swap. One
        short session reads the pointers; sessions are built after it is closed."""
        self._follow(None)
        self.metrics.unloadable_versions.set(len(self.load_failures()))

    def follow(self, classifier_id: int) -> None:
        """Bring one classifier up to its pointer now (the sync's work for it), before the caller answers:
        called when this process reports a promotion (a job read as ``promoted``)."""
        self._follow(classifier_id)

    def adopt(self, served: Served, generation: int) -> bool:
        """Swap ``served`` in unless a newer pointer (higher generation) is already served; True if swapped."""
        with self._lock:
            if generation < self._generations.get(served.classifier, -1):
                return False
            self._generations[served.classifier] = generation
            self.state.swap(served)
            return True

    def forget(self, classifier: str) -> None:
        """Stop serving a deleted classifier on this replica (other replicas notice at their next sync)."""
        with self._lock:
            self._generations.pop(classifier, None)
            self._unknowns.pop(classifier, None)
            for key in [k for k in self._failures if k[0] == classifier]:
                del self._failures[key]
            self._pointers_seen = {k: v for k, v in self._pointers_seen.items() if k != classifier}
            self.state.forget(classifier)

    def forget_version(self, classifier: str, version: int) -> None:
        """Drop a pruned version's cached session on this replica."""
        self.state.forget(classifier, version)

    def _follow(self, classifier_id: int | None) -> None:
        moved: list[tuple[VersionRef, int]] = []
        with self.sessions() as s:
            rows = registry.active_pointers(s, classifier_id)
            unpointed = set(self.state.active_versions()) - {clf.name for clf, _, _ in rows}
            gone = unpointed - {c.name for c in registry.list_classifiers(s)} if classifier_id is None and unpointed else set()
            with self._lock:
                for clf, v, generation in rows:
                    if generation < self._generations.get(clf.name, -1):
                        continue  # an older read than what is served: nothing to do
                    self._unknowns[clf.name] = (clf.id, UnknownSettings.from_dict(clf.unknowns))
                    cur = self.state.active(clf.name)
                    if cur is not None and cur.version == v.number:
                        self._generations[clf.name] = generation  # same version, newer move (e.g. back and forth)
                    else:
                        moved.append((version_ref(self.store, clf, v), generation))
        for name in gone:  # deleted (on another replica): served here no longer
            self.forget(name)
        pointers = {clf.name: v.number for clf, v, _ in rows}
        self._pointers_seen = pointers if classifier_id is None else {**self._pointers_seen, **pointers}
        now = time.monotonic()
        for ref, generation in moved:  # one that fails to load does not hold up the others
            failure = self._failures.get((ref.classifier, ref.number))
            if failure is not None and now < failure.retry_at:
                continue
            try:
                served = self.load(ref)
            except Unavailable:
                continue  # logged and counted by load(); the previous version serves meanwhile
            self.adopt(served, generation)

    # --- predict ----------------------------------------------------------------------------------

    async def predict(self, name: str, cmd: Predict) -> dict[str, Any]:
        """Decode and run as part of a micro-batch with concurrent requests (see service.inference.batching)."""
        if not len(cmd.inputs):
            raise Invalid("inputs is empty")
        if len(cmd.inputs) > self.settings.max_predict_items:
            raise Invalid(f"inputs has {len(cmd.inputs)} items; the limit is {self.settings.max_predict_items}")
        start = time.perf_counter()
        served = self.state.active(name) if cmd.version is None else self.state.cached(name, cmd.version)
        if served is None:  # not served yet on this replica: read where it is, then build it (single flight)
            ref = await anyio.to_thread.run_sync(self._ref, name, cmd.version)
            served = await anyio.to_thread.run_sync(self.load, ref)
        if served.scenario == "task-incremental":
            if cmd.task is None:
                raise Invalid(f"classifier {name!r} is task-incremental: give 'task', one of {sorted(served.tasks)}")
            if cmd.task not in served.tasks:
                raise Invalid(f"unknown task {cmd.task!r} for version {served.version}; known: {sorted(served.tasks)}")
        rows = await self.decoder.prepare(cmd.inputs, served.fmt)
        logits, run_rows = await served.batcher.submit(rows)  # the batch's thread only runs the model
        predictions = served.postprocess(logits, cmd.top_k, cmd.task)
        if served.novelty is not None:
            unknown = self._count_unknowns(served, predictions)
            found = self._unknowns.get(name)
            if unknown and found is not None and found[1].capture:
                kept = [str(cmd.inputs[i]["text"]).encode() for i in unknown] if served.fmt.input.kind == "text" else \
                    [array_bytes(rows[i]) for i in unknown]  # fmt: skip
                await anyio.to_thread.run_sync(self._capture, served, found, kept, unknown, predictions)
        self.metrics.predict_seconds.labels(name, str(served.version)).observe(time.perf_counter() - start)
        self.metrics.batch_size.labels(name).observe(len(cmd.inputs))
        self.metrics.model_batch_rows.labels(name).observe(run_rows)
        return {"classifier": name, "version": served.version, "predictions": predictions,
                "novelty_threshold": served.novelty_threshold}  # fmt: skip

    def _count_unknowns(self, served: Served, predictions: list[dict[str, Any]]) -> list[int]:
        """Count the predictions scored and flagged unknown (metrics, the dashboard's rate); the flagged indices."""
        unknown = [i for i, p in enumerate(predictions) if p["known"] is False]
        key = (served.classifier, served.version)
        counters = self._counters.get(key)
        if counters is None:  # the labelled children, looked up once per version rather than per request
            version = str(served.version)
            counters = self._counters[key] = (self.metrics.novelty_predictions.labels(served.classifier, version),
                                              self.metrics.unknown_predictions.labels(served.classifier, version))  # fmt: skip
        counters[0].inc(len(predictions))
        if unknown:
            counters[1].inc(len(unknown))
        self.unknown_rate.record(served.classifier, served.version, len(predictions), len(unknown))
        return unknown

    def _capture(self, served: Served, found: tuple[int, UnknownSettings], data: list[bytes], unknown: list[int],
                 predictions: list[dict[str, Any]]) -> None:  # fmt: skip
        """Keep the flagged inputs (the model's input rows as .npy, or a message's UTF-8 text, as sent); a failure
        is logged, never the request's."""
        classifier_id, settings = found
        try:
            kept = [(float(predictions[i]["novelty"]), d) for i, d in zip(unknown, data, strict=True)]
            with self.sessions() as s:
                registry.add_captured(s, classifier_id, served.version, kept, settings.capture_max,
                                      settings.capture_max_age_hours)  # fmt: skip
                s.commit()
            self.metrics.captured_inputs.labels(served.classifier).inc(len(kept))
        except Exception:
            log.exception("could not capture %d unknown inputs of %s", len(unknown), served.classifier)

    def _ref(self, name: str, version: int | None) -> VersionRef:
        """Where a pinned version, or the active one, is (a short session, closed before any build)."""
        with self.sessions() as s:
            clf = registry.get_classifier(s, name)
            self._unknowns[clf.name] = (clf.id, UnknownSettings.from_dict(clf.unknowns))
            number = version if version is not None else clf.active_version
            if number is None:
                raise Conflict(f"classifier {name!r} has no active version yet; learn something first")
            v = registry.get_version(s, clf, number)
            if v.status == "pruned":
                raise Gone(f"version {number} of {name!r} was pruned by the retention policy: its files are gone")
            return version_ref(self.store, clf, v)
