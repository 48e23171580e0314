"""A classifier's unknown-input settings: the known rate its novelty threshold is calibrated at, and capture.

Capture (off by default) keeps the inputs a served version flags as unknown, at most ``capture_max`` of them and
for at most ``capture_max_age_hours``, so that they can be exported as a folder (``engram unknowns export``),
sorted into class folders and learned. It keeps inputs, so it refuses jobs whose samples must be discarded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from service.domain.errors import Invalid


@dataclass(frozen=True)
class UnknownSettings:
    known_rate: float = 0.95  # share of held-out known samples calibrated as known
    capture: bool = False
    capture_max: int = 1000  # captured inputs kept per classifier; the oldest go first
    capture_max_age_hours: float = 168.0  # captured inputs older than this are deleted

    @classmethod
    def from_dict(cls, stored: dict[str, Any] | None) -> UnknownSettings:
        return cls(**{k: v for k, v in (stored or {}).items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def refuse_discard_with_capture(settings: UnknownSettings, retention: str, classifier: str) -> None:
    """Privacy first: a classifier that keeps flagged inputs cannot take jobs whose samples must not be kept."""
    if settings.capture and retention == "discard":
        raise Invalid(
            f"classifier {classifier!r} captures inputs its versions flag as unknown (unknowns.capture), so it "
            "keeps inputs, which retention 'discard' forbids; send this job with retention 'keep', or use a "
            "classifier created without capture"
        )
