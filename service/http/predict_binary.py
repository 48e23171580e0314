"""POST /v1/classifiers/{name}/predict/binary: a batch without base64 or JSON.

A sibling of the JSON predict route rather than a second content type on it: the JSON route keeps
Litestar's own body parsing (and its exact error answers), and this one reads its body itself. Options
travel as query parameters (``top_k``, ``task``, ``version``), the same names and bounds as the JSON
body's. The rows go through the same application call, batcher and ONNX Runtime session as JSON ones.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from litestar import Request, post
from litestar.datastructures import UploadFile
from litestar.openapi.spec import OpenAPIFormat, OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.params import Parameter

from service.domain.commands import Predict
from service.http.deps import svc
from service.http.openapi import answers, file_parts
from service.inference.binary import NPY_TYPES, ImageFiles, NpyBatch, Unfit
from service.schemas import PredictResult

BINARY_TYPES = (*NPY_TYPES, "multipart/form-data")


async def read_binary(request: Request[Any, Any, Any], max_items: int) -> NpyBatch | ImageFiles:
    """The body as an ``.npy`` batch or a list of image files; Undecodable (400) or Unfit (422) when it is neither."""
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype == "multipart/form-data":
        form = await request.form()
        parts = form.getall("file", [])
        if not parts:
            raise Unfit("the form has no 'file' part; send one 'file' part per image")
        unknown = sorted({str(k)[:64] for k in form if k != "file"})
        if unknown:
            raise Unfit(f"the form has unknown field(s) {unknown[:5]}; it takes one 'file' part per image")
        if not all(isinstance(p, UploadFile) for p in parts):
            raise Unfit("each 'file' part must be a file (with a filename), not a text field")
        if len(parts) > max_items:
            raise Unfit(f"the form has {len(parts)} files; the limit is {max_items}")
        return ImageFiles([await p.read() for p in parts])
    batch = NpyBatch(await request.body())
    if len(batch) == 0:
        raise Unfit("the array has no rows")
    if len(batch) > max_items:
        raise Unfit(f"the array has {len(batch)} rows; the limit is {max_items}")
    return batch


def binary_request_body() -> RequestBody:
    npy = Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY,
                 description="an .npy file (numpy.save) of shape (N, C, H, W) for image classifiers or (N, dim) for "
                 "vector ones: float32 or float64 values as the model takes them ([0, 1] pixels), or uint8 raw "
                 "pixels (scaled by the classifier's pixel_scale, 255)")  # fmt: skip
    form = Schema(
        type=OpenAPIType.OBJECT,
        properties={
            "file": file_parts("one encoded image (PNG, JPEG, WebP, GIF, BMP or TIFF) per input, in order")
        },
        required=["file"],
        additional_properties=False,
    )
    return RequestBody(
        required=True,
        description="An .npy array of the classifier's input shape, or a multipart form of image files (image "
        "classifiers); top_k, task and version are query parameters",
        content={
            **{t: OpenAPIMediaType(schema=npy) for t in NPY_TYPES},
            "multipart/form-data": OpenAPIMediaType(schema=form),
        },
    )


_BINARY_BODY = binary_request_body()


@dataclasses.dataclass
class BinaryPredictOperation(Operation):
    def __post_init__(self) -> None:
        self.request_body = _BINARY_BODY


@post("/classifiers/{name:str}/predict/binary",
      opt={"role": "predict", "content_types": BINARY_TYPES, "body_required": True, "body_bound": "predict"},
      status_code=200, operation_class=BinaryPredictOperation,
      responses=answers(200, PredictResult, "One prediction per row or file, in order", 400, 404, 409, 410, 413, 422))  # fmt: skip
async def predict_binary(
    request: Request[Any, Any, Any],
    name: str,
    top_k: Annotated[int, Parameter(ge=1, le=1000, description="labels ranked per input")] = 1,
    task: Annotated[str | None, Parameter(description="the task (task-incremental classifiers)")] = None,
    version: Annotated[int | None, Parameter(ge=1, le=2**31 - 1, description="pin a version")] = None,
) -> dict[str, Any]:
    service = svc(request)
    batch = await read_binary(request, service.settings.max_predict_items)
    # The application reads ``inputs`` only as a sequence it hands to the batcher, whose prepare step
    # (service.inference.sessions) converts an NpyBatch or ImageFiles with the classifier's input format.
    return await service.serving.predict(name, Predict(batch, top_k, task, version))
