"""HTTP request schemas -> the application's command types (``service.domain.commands``), at the edge.

The only place that knows both: a renamed wire field changes a line here, not the services or the
jobs already queued.
"""

from __future__ import annotations

from pydantic import BaseModel

from service.domain.commands import Learn, NewClassifier, Predict, TrainOptions
from service.schemas import ClassifierCreate, LearnRequest, PredictRequest


def to_new_classifier(req: ClassifierCreate) -> NewClassifier:
    backbone = req.backbone.model_dump(exclude_none=True) if isinstance(req.backbone, BaseModel) else req.backbone
    return NewClassifier(req.name, {k: v for k, v in req.input.model_dump().items() if v is not None}, req.scenario, backbone,
                         req.gate.model_dump() if req.gate else None,
                         req.unknowns.model_dump() if req.unknowns else None)  # fmt: skip


def to_learn(req: LearnRequest) -> Learn:
    o = req.options
    return Learn(task=req.task, strategy=req.strategy, samples=req.samples, retention=req.retention,
                 eval_samples=req.eval_samples, options=TrainOptions(o.iterations, o.batch_size, o.lr, o.seed),
                 params=dict(req.params), gate=req.gate.model_dump(exclude_none=True) if req.gate else None)  # fmt: skip


def to_predict(req: PredictRequest) -> Predict:
    return Predict(req.inputs, req.top_k, req.task, req.version)
