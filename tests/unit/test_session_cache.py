"""The pinned-version session cache (ServingState): bounded in bytes, never rebuilt per request while what is in
use fits. The eviction order and the active versions' place are tested in tests/unit/test_shared_backbone.py."""

from __future__ import annotations

from service.inference.sessions import ServingState


class _Fake:
    def __init__(self, classifier: str, version: int, nbytes: int) -> None:
        self.classifier, self.version, self.nbytes = classifier, version, nbytes


def test_a_cycle_that_fits_is_never_evicted() -> None:
    """Six small versions cycled in turn: a count-bounded cache of four evicted on every request."""
    state = ServingState(cache_bytes=6 * 300_000)
    misses = 0
    for _ in range(3):
        for v in range(6):
            if state.cached("c", v) is None:
                misses += 1
                state.remember(_Fake("c", v, 300_000))  # type: ignore[arg-type]
    assert misses == 6
