"""ServingService.adopt: swaps are ordered by the pointer's generation, whatever order the builds end in."""

from __future__ import annotations

from typing import Any

from service.application.metrics import Metrics
from service.application.serving import ServingService
from service.inference.sessions import Served, ServingState
from service.settings import Settings


def served(version: int) -> Served:
    fake: Any = None  # adopt and swap read only the classifier and the version
    return Served("c", version, fake, [], {}, fake, "class-incremental", fake)


def service() -> ServingService:
    fake: Any = None
    return ServingService(Settings(), fake, fake, ServingState(), Metrics())


def test_a_build_from_an_older_pointer_read_never_replaces_a_newer_one() -> None:
    svc = service()
    assert svc.adopt(served(3), generation=7)  # e.g. a job read as promoted, or an admin move
    assert not svc.adopt(served(2), generation=5)  # a sync that read the pointer before, and built slowly
    assert svc.state.active_versions() == {"c": 3}
    assert svc.adopt(served(2), generation=8)  # a later rollback to 2 is served
    assert svc.state.active_versions() == {"c": 2}


def test_the_same_generation_may_swap_again() -> None:
    svc = service()
    assert svc.adopt(served(1), generation=1)
    assert svc.adopt(served(1), generation=1)  # the sync and a job read racing on one read: both fine
    assert svc.state.active_versions() == {"c": 1}
