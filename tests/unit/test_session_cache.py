"""The pinned-version session cache: bounded in bytes, least recently used out first, never rebuilt per request
while what is in use fits."""

from __future__ import annotations

from service.inference.session_cache import SessionCache


def test_entries_leave_least_recently_used_first_once_over_the_budget() -> None:
    cache: SessionCache[str, int] = SessionCache(max_bytes=100)
    for key in "abc":
        cache.put(key, ord(key), 40)
    assert "a" not in cache and len(cache) == 2 and cache.bytes == 80
    assert cache.get("b") == ord("b")  # b is now the most recent: c goes next
    cache.put("d", 0, 40)
    assert "c" not in cache and "b" in cache and "d" in cache


def test_a_cycle_that_fits_is_never_evicted() -> None:
    """Six small versions cycled in turn: a count-bounded cache of four evicted on every request."""
    cache: SessionCache[int, str] = SessionCache(max_bytes=6 * 300_000)
    misses = 0
    for _ in range(3):
        for v in range(6):
            if cache.get(v) is None:
                misses += 1
                cache.put(v, f"session {v}", 300_000)
    assert misses == 6


def test_the_newest_entry_is_kept_whatever_its_size_and_a_swap_keeps_its_size() -> None:
    cache: SessionCache[str, str] = SessionCache(max_bytes=10)
    cache.put("small", "s", 5)
    cache.put("huge", "h", 1000)
    assert len(cache) == 1 and cache.get("huge") == "h"
    cache.put("huge", "h")  # re-added without a size (a swap): the recorded one counts
    assert cache.bytes == 1000
