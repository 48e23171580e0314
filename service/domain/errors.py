"""The domain errors, one module that the application layer raises and the HTTP layer maps (no HTTP here).

``service.http.problems`` turns each into its problem+json status; the worker and the registry raise them too.
"""

from __future__ import annotations


class NotFound(LookupError):
    """A classifier, version or job does not exist (404)."""


class Conflict(RuntimeError):
    """The request is well formed but the current state forbids it (409)."""


class PointerMoved(Conflict):
    """A compare-and-set on a classifier's active version lost a race: the pointer is no longer where the
    caller read it (409, naming the version that is active now)."""

    def __init__(self, classifier: str, expected: int | None, current: int | None) -> None:
        self.classifier, self.expected, self.current = classifier, expected, current
        super().__init__(
            f"the active version of {classifier!r} changed while this request ran: expected "
            f"{_v(expected)}, now {_v(current)}; read it again and retry if still wanted"
        )


class Gone(LookupError):
    """It existed, and was removed on purpose: a version pruned by the retention policy (410)."""


class Invalid(ValueError):
    """Well-formed JSON that cannot be acted on (422)."""


class Unavailable(RuntimeError):
    """A dependency (the database) does not answer; the request may be retried later (503 + Retry-After)."""

    def __init__(self, detail: str, retry_after: int = 5) -> None:
        self.retry_after = retry_after
        super().__init__(detail)


def _v(number: int | None) -> str:
    return "no active version" if number is None else f"v{number}"
