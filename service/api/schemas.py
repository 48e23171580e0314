"""Wire schemas (pydantic). Sample items stay loosely typed here: ``service.preprocess`` validates each
one and names the bad item, which a schema error could not do as clearly."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageInput(Strict):
    kind: Literal["image"]
    channels: Literal[1, 3] = 1
    height: int = Field(ge=4, le=1024)
    width: int = Field(ge=4, le=1024)


class VectorInput(Strict):
    kind: Literal["vector"]
    dim: int = Field(ge=1, le=100_000)


class GateSettings(Strict):
    tolerance: float | None = Field(default=None, ge=0, le=1, description="max accuracy drop per old task")
    new_task_floor: float | None = Field(default=None, ge=0, le=1, description="min accuracy on the new task")
    holdout: float | None = Field(default=None, gt=0, lt=1, description="share of each class held out for evaluation")
    manual_approval: bool | None = Field(default=None, description="wait for an admin instead of promoting")


class ClassifierCreate(Strict):
    name: str = Field(pattern=NAME)
    input: Annotated[ImageInput | VectorInput, Field(discriminator="kind")]
    scenario: Literal["class-incremental", "task-incremental"] = "class-incremental"
    backbone: Literal["mlp", "cnn", "resnet18"] | None = None
    gate: GateSettings | None = None


class TrainOptions(Strict):
    iterations: int = Field(default=300, ge=1, le=100_000, description="optimiser steps for this job")
    batch_size: int = Field(default=64, ge=1, le=4096)
    lr: float = Field(default=1e-3, gt=0, le=1)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)


class LearnRequest(Strict):
    task: str = Field(pattern=NAME)
    strategy: str
    retention: Literal["keep", "discard"] = "keep"
    samples: list[dict[str, Any]]
    eval_samples: list[dict[str, Any]] | None = None
    options: TrainOptions = Field(default_factory=TrainOptions)
    params: dict[str, Any] = Field(default_factory=dict, description="strategy parameters")
    gate: GateSettings | None = None


class PredictRequest(Strict):
    inputs: list[dict[str, Any]]
    top_k: int = Field(default=1, ge=1, le=1000)
    task: str | None = None
    version: int | None = Field(default=None, ge=1, le=2**31 - 1)


class PromoteRequest(Strict):
    force: bool = False
    reason: str | None = Field(default=None, max_length=2000)


class RollbackRequest(Strict):
    to_version: int | None = Field(default=None, ge=1, le=2**31 - 1)
    reason: str | None = Field(default=None, max_length=2000)
