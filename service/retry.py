"""One backoff rule for everything that retries: the database listener's reconnects, a version's session loads,
a job's final write."""

from __future__ import annotations


def backoff(attempt: int, first: float, cap: float) -> float:
    """Seconds to wait before retry ``attempt`` (1 for the first): ``first`` doubled per failure, at most ``cap``."""
    return float(min(cap, first * 2 ** max(0, attempt - 1)))
