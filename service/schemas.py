"""Wire schemas (pydantic): request bodies, response bodies and the problem+json error body.

The OpenAPI document is generated from these models' JSON schemas (``service.http.openapi``), so what it
promises is what pydantic checks. Some rules are only documented here, via ``json_schema_extra``, and
checked by the application with clearer messages than a schema error: the strategy names, non-empty
sample and input lists, and the shape of each item (``service.inference.inputs`` names the bad item).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Json, JsonValue
from pydantic_core import PydanticCustomError

from model_core.config import BUILTIN_BACKBONES
from model_core.strategy_specs import SPECS
from service.domain import commands
from service.domain.job_status import TERMINAL as TERMINAL  # re-exported: the client and routes import it here
from service.domain.job_status import JobStatus

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
STRATEGIES: list[JsonValue] = [*sorted(SPECS)]

# One item of ``inputs`` (predict), ``samples`` or ``eval_samples`` (learn); the classifier's input kind
# decides which key it needs.
_ITEM: dict[str, Any] = {
    "type": "object",
    "properties": {
        "image_b64": {"type": "string", "contentEncoding": "base64", "description": "an encoded image (PNG, JPEG...)"},
        "vector": {"type": "array", "items": {"type": "number"}, "description": "exactly the classifier's dim"},
        "text": {"type": "string", "minLength": 1, "maxLength": 20_000,
                 "description": "text classifiers: the message (at most the classifier's max_tokens tokens, "
                                "[CLS] and [SEP] included; longer ones are refused, never cut; no control "
                                "characters but tab and newlines; not only whitespace)"},
    },
    "anyOf": [{"required": ["image_b64"]}, {"required": ["vector"]}, {"required": ["text"]}],
    "additionalProperties": False,  # service.inference.inputs refuses unknown fields, naming the item
}
_SAMPLE: dict[str, Any] = {
    **_ITEM,
    "properties": {**_ITEM["properties"], "label": {"type": "string", "minLength": 1, "maxLength": 128}},
    "required": ["label"],
}


def _json_integer(value: Any) -> Any:
    """An integer as JSON Schema counts one, which strict pydantic does not: 2.0 is one, true is not."""
    if isinstance(value, bool):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return int(value) if isinstance(value, float) and value.is_integer() else value


JsonInt = BeforeValidator(_json_integer)  # on every integer field of a request body


class Strict(BaseModel):
    """Request bodies: unknown fields and JSON of the wrong type (``"5"`` or ``0`` for ``true``) are refused,
    as the published schema says, rather than coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ImageInput(Strict):
    kind: Literal["image"]
    channels: Annotated[Literal[1, 3], JsonInt] = 1
    height: Annotated[int, JsonInt] = Field(ge=4, le=1024)
    width: Annotated[int, JsonInt] = Field(ge=4, le=1024)


class VectorInput(Strict):
    kind: Literal["vector"]
    dim: Annotated[int, JsonInt] = Field(ge=1, le=100_000)


class TextInput(Strict):
    kind: Literal["text"]
    max_tokens: Annotated[int, Field(ge=8, le=512), JsonInt] | None = Field(
        default=None, description="tokens a message may have, [CLS] and [SEP] included; a longer "
        "message is refused (422), never cut. Default 128, the length all-MiniLM-L6-v2 was trained at")


class GateSettings(Strict):
    tolerance: float | None = Field(default=None, ge=0, le=1, description="max accuracy drop per old task")
    new_task_floor: float | None = Field(default=None, ge=0, le=1, description="min accuracy on the new task; "
                                         "unset: read from the job's data (chance and a nearest-class-mean reference)")
    holdout: float | None = Field(default=None, gt=0, lt=1, description="share of each class held out for evaluation")
    manual_approval: bool | None = Field(default=None, description="wait for an admin instead of promoting")


class UnknownsSettings(Strict):
    known_rate: float = Field(default=0.95, ge=0.5, le=0.999, description="share of held-out known samples each "
                              "version's novelty threshold is calibrated to call known")
    capture: bool = Field(default=False, description="keep inputs flagged unknown for export (refuses jobs with "
                          "retention 'discard')")
    capture_max: Annotated[int, JsonInt] = Field(default=1000, ge=1, le=100_000, description="captured inputs kept; "
                                                 "the oldest go first")
    capture_max_age_hours: float = Field(default=168.0, gt=0, le=24 * 365, description="captured inputs older "
                                         "than this are deleted")


_BUILTIN = "|".join(BUILTIN_BACKBONES)
_BUILTIN_TEXT = ", ".join(BUILTIN_BACKBONES)
BACKBONE_NAME = rf"^({_BUILTIN}|(timm|torchvision)/[A-Za-z0-9][A-Za-z0-9_.-]{{0,127}})$"


class BackboneChoice(Strict):
    """A backbone with its weights' source and what trains (see model_core.config.BackboneSpec)."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"name": "timm/efficientnet_lite0", "weights": "package", "train": "frozen", "resolution": 224},
        {"name": "torchvision/resnet18", "weights": "file", "file": "resnet18.safetensors"},
    ]})  # fmt: skip

    name: str = Field(
        pattern=BACKBONE_NAME,
        description=f"{_BUILTIN_TEXT}, 'timm/<timm model name>', 'torchvision/<torchvision model name>' or, for "
        "text, 'sentence-transformers/all-MiniLM-L6-v2' (the default for text, packaged weights, frozen)",
    )
    weights: Literal["none", "package", "file", "download"] | None = Field(
        default=None, description="default: package if one ships them, else download (refused when the host "
        f"may not download and they are not cached); none for {_BUILTIN_TEXT}",
    )  # fmt: skip
    file: str | None = Field(default=None, min_length=1, max_length=4096,
                             description="weights 'file': a safetensors or torch state-dict file, by its path "
                             "relative to the server's weights directory (ENGRAM_WEIGHTS_DIR)")  # fmt: skip
    train: Literal["frozen", "last", "all"] | None = Field(
        default=None, description="what of the backbone trains; default frozen with pretrained weights, else all")
    resolution: Annotated[int, Field(ge=16, le=1024), JsonInt] | None = Field(
        default=None, description="px the images are resized to in the model (registry backbones)")


class ClassifierCreate(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"name": "digits", "input": {"kind": "image", "channels": 1, "height": 8, "width": 8}},
        {"name": "sensors", "input": {"kind": "vector", "dim": 4}, "scenario": "task-incremental"},
        {"name": "inbox", "input": {"kind": "text"}, "unknowns": {"capture": True}},
    ]})  # fmt: skip

    name: str = Field(pattern=NAME)
    input: Annotated[ImageInput | VectorInput | TextInput, Field(discriminator="kind")]
    scenario: Literal["class-incremental", "task-incremental"] = "class-incremental"
    backbone: Annotated[str, Field(pattern=BACKBONE_NAME)] | BackboneChoice | None = Field(
        default=None, description=f"a name ({_BUILTIN_TEXT}, timm/<model>, torchvision/<model>; default by input "
        "size), or an object saying where the weights come from and what trains",
    )  # fmt: skip
    gate: GateSettings | None = None
    unknowns: UnknownsSettings | None = Field(default=None, description="novelty calibration and capture of "
                                              "inputs flagged unknown")


_OPTIONS = commands.TrainOptions()  # the defaults, stated once (the domain's, which are model_core's TrainConfig's)


class TrainOptions(Strict):
    iterations: Annotated[int, Field(ge=1, le=100_000), JsonInt] | None = Field(
        default=None, description="optimiser steps for this job; null (the default): as many as "
        "the data need, from the number of samples and classes, stopped when a validation loss stops improving",
    )
    batch_size: Annotated[int, JsonInt] = Field(default=_OPTIONS.batch_size, ge=1, le=4096)
    lr: float = Field(default=_OPTIONS.lr, gt=0, le=1)
    seed: Annotated[int, JsonInt] = Field(default=_OPTIONS.seed, ge=0, le=2**31 - 1)


class LearnRequest(Strict):
    task: str = Field(pattern=NAME)
    # A plain string so that an unknown name gets the application's 422, which lists the valid ones.
    strategy: str | None = Field(
        default=None, description="a strategy from GET /v1/strategies; omitted or null: the classifier's default "
        "(its last job's strategy, else the exemplar-free strategy measured best for its input: analytic on a frozen "
        "pretrained backbone, class_models for small grey images and vectors)",
        json_schema_extra={"enum": [*STRATEGIES, None]},
    )
    retention: Literal["keep", "discard"] = "keep"
    samples: list[dict[str, Any]] = Field(
        description="labelled samples; at least 2 per class unless eval_samples is given",
        json_schema_extra={"minItems": 1, "items": _SAMPLE},
    )
    eval_samples: list[dict[str, Any]] | None = Field(
        default=None,
        description="evaluation samples for the gate; default: a stratified share of samples",
        json_schema_extra={"anyOf": [{"type": "array", "items": _SAMPLE}, {"type": "null"}]},
    )
    options: TrainOptions = Field(default_factory=TrainOptions)
    params: dict[str, Any] = Field(default_factory=dict, description="strategy parameters")
    gate: GateSettings | None = None


class PredictRequest(Strict):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"inputs": [{"vector": [0.1, 0.2, 0.0, 0.1]}], "top_k": 2}]}
    )

    inputs: list[dict[str, Any]] = Field(json_schema_extra={"minItems": 1, "items": _ITEM})
    top_k: Annotated[int, JsonInt] = Field(default=1, ge=1, le=1000)
    task: str | None = None
    version: Annotated[int | None, JsonInt] = Field(default=None, ge=1, le=2**31 - 1)


class PromoteRequest(Strict):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"force": True, "reason": "the drop on task 'first' is accepted"}]}
    )

    force: bool = False
    reason: str | None = Field(default=None, max_length=2000)


class RollbackRequest(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{"reason": "the new version mislabels sevens"}]})

    to_version: Annotated[int | None, JsonInt] = Field(default=None, ge=1, le=2**31 - 1)
    reason: str | None = Field(default=None, max_length=2000)


# --- responses ----------------------------------------------------------------------------------------
# Closed (additionalProperties: false) and with every field required: the fuzz test
# (tests/e2e/test_fuzz.py) then fails on a field the document does not list or a listed one that is
# missing. The application builds plain dicts; these models only describe them.

VersionStatus = Literal["candidate", "active", "rejected", "retired", "pruned"]


class Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputView(Out):
    kind: Literal["image", "vector", "text"]
    channels: int = Field(description="images: 1 (grey) or 3 (RGB)")
    height: int = Field(description="images only (0 otherwise)")
    width: int = Field(description="images only (0 otherwise)")
    dim: int = Field(description="vectors only (0 otherwise)")
    max_tokens: int = Field(description="text only: tokens a message may have (0 otherwise)")


class GateView(Out):
    tolerance: float | None = Field(description="max accuracy drop per old task; null: sized by the evaluation set")
    new_task_floor: float | None = Field(description="min accuracy on a new task; null: read from each job's data "
                                         "(chance and a nearest-class-mean reference; the report's floor_source)")
    manual_approval: bool
    holdout: float


class ClassifierView(Out):
    name: str
    input: InputView
    scenario: Literal["class-incremental", "task-incremental"]
    backbone: str
    gate: GateView = Field(description="the gate defaults of every learn job")
    unknowns: UnknownsSettings = Field(description="novelty calibration and capture")
    active_version: int | None = Field(description="the version predict uses; null until one is promoted")
    created_at: dt.datetime


class TaskView(Out):
    name: str
    labels: list[str]


class VersionView(Out):
    version: int
    status: VersionStatus
    parent: int | None
    strategy: str
    params: dict[str, Any] = Field(description="the strategy parameters it was trained with")
    classes: list[str]
    tasks: list[TaskView]
    report: dict[str, Any] = Field(
        description="the gate's report: accuracy per task and per class, failures, ONNX check, forgotten classes "
        "and the next step"
    )
    job_id: str | None
    created_at: dt.datetime


class JobView(Out):
    job_id: str
    status: JobStatus
    task: str
    strategy: str
    retention: Literal["keep", "discard"]
    progress: dict[str, Any] = Field(description="stage, step, total and losses while it trains")
    parent: int | None
    version: int | None = Field(description="the version it produced, once it has")
    report: dict[str, Any] | None = Field(description="the gate's report, once it has one")
    error: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    seconds: dict[str, float] = Field(description="time per stage")
    worker: str | None = Field(description="host:pid:id of the worker that took the job")


class Ranked(Out):
    label: str
    score: float = Field(ge=0, le=1)


class Prediction(Out):
    label: str
    score: float = Field(ge=0, le=1)
    top_k: list[Ranked]
    novelty: float | None = Field(description="how far the input lies from every known class (higher: more novel); "
                                  "null when the version's strategy keeps no class models")
    known: bool | None = Field(description="novelty at or below the version's calibrated threshold; null without "
                               "novelty")


class PredictResult(Out):
    classifier: str
    version: int
    predictions: list[Prediction] = Field(description="one per input, in order")
    novelty_threshold: float | None = Field(description="the version's threshold: a novelty above it is unknown")


class JobEvent(Out):
    """One server-sent event of GET /v1/jobs/{job_id}/events (as Open API 3.1 describes a stream's events)."""

    event: Literal["progress", "end"] = Field(description="'end' once the job has ended; the stream then closes")
    data: Json[JobView] = Field(description="the job, as JSON")


class StrategyView(Out):
    summary: str
    stores_data: bool = Field(description="keeps samples of old tasks (refused with retention 'discard')")
    adds_classes: bool = Field(description="can add classes to a class-incremental classifier")
    needs_tasks: bool = Field(description="task-incremental classifiers only (refused on class-incremental ones)")
    parameters: dict[str, Any] = Field(description="parameter names and defaults")


class AuditView(Out):
    action: str = Field(description="promote, rollback, auto-promote, or prune (to_version: the version pruned)")
    actor: str = Field(description="role and key fingerprint (never the key), or 'worker'")
    from_version: int | None
    to_version: int
    reason: str | None
    forced: bool
    at: dt.datetime


class CapturedInput(Out):
    id: int
    version: int = Field(description="the version that flagged it")
    novelty: float
    created_at: dt.datetime
    image_b64: str | None = Field(default=None, description="images: the input as a PNG, base64")
    vector: list[float] | None = Field(default=None, description="vectors: the input")
    text: str | None = Field(default=None, description="text: the message, as it was sent")


class CapturedInputs(Out):
    classifier: str
    capture: bool = Field(description="whether the classifier captures inputs flagged unknown")
    items: list[CapturedInput] = Field(description="oldest first; deleted once exported (DELETE) or expired")


class RetentionRequest(Strict):
    """A classifier's own retention policy (docs/operations/lifecycle.md); a field left out takes the deployment's
    default."""

    keep_ancestors: Annotated[int | None, JsonInt] = Field(default=None, ge=0, le=10_000,
                                       description="the active version's nearest ancestors kept")  # fmt: skip
    keep_days: float | None = Field(default=None, ge=0, le=100_000,
                                    description="versions active, or created, within this many days are kept")  # fmt: skip


class RetentionView(Out):
    classifier: str
    keep_ancestors: int
    keep_days: float
    own: bool = Field(description="the classifier's own policy; false: the deployment's default")


class PrunedVersion(Out):
    version: int
    status: VersionStatus = Field(description="its status before it was pruned")
    bytes: int = Field(description="its bundle's own files")


class KeptVersion(Out):
    version: int
    status: VersionStatus
    reason: str = Field(description="the policy's rule that keeps it")


class ContentCollected(Out):
    removed: list[str] = Field(description="sha256 of the content no kept version references any more, deleted")
    bytes: int
    deferred: str | None = Field(description="why nothing was collected now (a job is live...); a later prune does")


class PruneResult(Out):
    classifier: str
    dry_run: bool = Field(description="true: what a prune would do; nothing was changed")
    policy: dict[str, float]
    pruned: list[PrunedVersion]
    kept: list[KeptVersion]
    content: ContentCollected
    bytes_freed: int


class DeleteResult(Out):
    classifier: str
    versions: int = Field(description="versions deleted (rows; their bundles went with them)")
    jobs: int = Field(description="jobs deleted, with their staged arrays")
    content: ContentCollected
    bytes_freed: int


class StorageUsage(Out):
    versions: int = Field(description="bytes of its kept versions' own files")
    content: int = Field(description="bytes of the content they reference, each once (shared content counts in "
                         "each classifier that references it)")
    total: int
    count: int = Field(description="kept versions")


class LifecycleEventView(Out):
    classifier: str
    action: str = Field(description="prune, delete, import or restore")
    actor: str
    detail: dict[str, Any]
    at: dt.datetime


class CapturedDeleted(Out):
    classifier: str
    deleted: int


class Health(Out):
    status: Literal["ok"]


class LoadFailureView(Out):
    version: int = Field(description="the active version that failed to load")
    error: str
    attempts: int
    retry_in_seconds: float = Field(description="the next attempt (backoff doubles per failure, up to 60 s)")


class Ready(Out):
    status: Literal["ready"]
    serving: dict[str, int] = Field(description="classifier name -> the version this replica serves")
    load_failures: dict[str, LoadFailureView] = Field(
        default_factory=dict, description="classifier name -> its active version this replica cannot load yet"
    )


class Unready(Out):
    status: Literal["unavailable"]
    reason: str


class ErrorItem(Out):
    """One failed check of a request: where (``key``, ``source``) and what."""

    message: str
    key: str | None = None
    source: str | None = Field(default=None, description="body, path, query, header or cookie")


class Problem(Out):
    """RFC 9457 problem details, sent as application/problem+json for every error."""

    type: Literal["about:blank"] = Field(description="the status code says what kind of problem this is")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str = Field(description="what went wrong and, where it can, what to send instead")
    instance: str = Field(description="the request path")
    field: str | None = Field(default=None, description="a bad input item: the list it is in")
    index: int | None = Field(default=None, description="a bad input item: its position in that list")
    reason: str | None = Field(default=None, description="a bad input item: what is wrong with it")
    errors: list[ErrorItem] | None = Field(default=None, description="request validation: every failed check")
    active_version: int | None = Field(
        default=None, description="a promotion or rollback that lost a race (409): the version active now"
    )
