"""The application layer's own command types and the stored job request (no HTTP, no torch).

The HTTP schemas (``service.schemas``) map onto these at the edge, so the wire format can change
without reaching the services; what is stored for later (a queued job's request) is a ``JobRequest`` with
a schema version, so renaming an HTTP field never breaks work already queued.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from model_core.config import TrainConfig


@dataclass(frozen=True)
class NewClassifier:
    name: str
    input: dict[str, Any]  # InputSpec's fields: kind, and dim or channels/height/width
    scenario: str = "class-incremental"
    # None: the default for the input kind; a name, or BackboneSpec's fields (name, weights, file, ...)
    backbone: str | dict[str, Any] | None = None
    gate: dict[str, Any] | None = None  # gate defaults that differ from GateConfig's
    unknowns: dict[str, Any] | None = None  # service.domain.unknowns.UnknownSettings's fields


@dataclass(frozen=True)
class TrainOptions:
    """The knobs of one training job (model_core.TrainConfig's fields, by the application's names)."""

    iterations: int | None = None  # optimiser steps; None: a budget from the data, stopped on a validation plateau
    batch_size: int = TrainConfig.batch_size
    lr: float = TrainConfig.lr
    seed: int = TrainConfig.seed  # also seeds the stratified evaluation holdout


@dataclass(frozen=True)
class Learn:
    task: str
    strategy: str | None  # None: the classifier's default (model_core.strategy_specs.default_strategy)
    samples: list[dict[str, Any]]
    retention: str = "keep"  # keep, or discard the staged samples when the job ends
    eval_samples: list[dict[str, Any]] | None = None
    options: TrainOptions = field(default_factory=TrainOptions)
    params: dict[str, Any] = field(default_factory=dict)  # strategy parameters
    gate: dict[str, Any] | None = None  # gate overrides for this job


@dataclass(frozen=True)
class Predict:
    inputs: Any  # a list of JSON items, or a decoded binary batch (service.inference.binary); anything with len()
    top_k: int = 1
    task: str | None = None
    version: int | None = None  # None: the active version


JOB_REQUEST_SCHEMA = 1  # bump when JobRequest's stored layout changes, and teach from_stored the old one


@dataclass(frozen=True)
class JobRequest:
    """What a queued job needs besides its staged arrays, as stored in ``jobs.request``."""

    options: TrainOptions
    params: dict[str, Any]  # checked strategy parameters
    gate: dict[str, Any]  # gate overrides
    samples: dict[str, int]  # {"train": n, "eval": n}
    classes: list[str]
    # The worker chooses the strategy among default_candidates by their scores on this job's data (the job's
    # strategy column holds the input's measured default until then): a classifier's first job naming none.
    # Read as False from rows stored without it (an older worker ignores it and runs the measured default).
    choose: bool = False

    def to_stored(self) -> dict[str, Any]:
        return {"schema": JOB_REQUEST_SCHEMA, **asdict(self)}

    @classmethod
    def from_stored(cls, stored: dict[str, Any]) -> JobRequest:
        """Read a stored request of this or an earlier schema. Schema 0 (rows written before schema
        versions) has the same layout, its options being the HTTP TrainOptions' dump of those days."""
        schema = int(stored.get("schema", 0))
        if schema > JOB_REQUEST_SCHEMA:
            raise ValueError(f"job request schema {schema} is newer than this worker's ({JOB_REQUEST_SCHEMA})")
        opts = stored.get("options", {})
        options = TrainOptions(**{k: opts[k] for k in ("iterations", "batch_size", "lr", "seed") if k in opts})
        return cls(options, dict(stored.get("params") or {}), dict(stored.get("gate") or {}),
                   dict(stored.get("samples") or {}), list(stored.get("classes") or []),
                   bool(stored.get("choose", False)))  # fmt: skip
