"""The OpenAPI document: schemas from pydantic, the responses of each operation, bearer security.

Litestar translates pydantic models field by field and loses rules on the way (``Field(pattern=...)``,
bounds of 0, ``extra="forbid"``). ``WireSchemaPlugin`` publishes each wire model's own JSON schema
instead, the one its validator enforces, so schema-based fuzzing (tests/e2e/test_fuzz.py) checks the
service against what it really accepts and answers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.spec import (
    Components,
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    Reference,
    RequestBody,
    Schema,
    SecurityScheme,
)
from litestar.plugins.pydantic import PydanticSchemaPlugin
from litestar.typing import FieldDefinition
from pydantic import BaseModel

from service import schemas
from service.http.problems import PROBLEM

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator

MODELS: dict[str, type[BaseModel]] = {
    name: obj
    for name, obj in vars(schemas).items()
    if isinstance(obj, type) and issubclass(obj, BaseModel) and obj.__module__ == schemas.__name__
}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


# JSON Schema keyword -> attribute of Litestar's Schema, and the keywords whose values are schemas.
_ATTRS = {str(f.metadata.get("alias") or _camel(f.name)): f.name for f in dataclasses.fields(Schema)}
_ONE = {"items", "additionalProperties", "not", "contains", "propertyNames", "if", "then", "else", "contentSchema"}
_MANY = {"allOf", "anyOf", "oneOf", "prefixItems"}
_MAP = {"properties", "patternProperties", "dependentSchemas"}
# $defs become components (or are inlined); titles pydantic derives from field names are noise; the
# discriminator is an annotation the ``const`` of each alternative already makes exact.
_SKIP = {"$defs", "title", "discriminator"}


def to_spec(
    node: dict[str, Any], ref: Callable[[str], Schema | Reference], into: Schema | None = None
) -> Schema | Reference:
    """A JSON schema (dict) as Litestar's Schema; ``ref`` resolves ``{"$ref": ".../Name"}`` by name."""
    if "$ref" in node:
        return ref(node["$ref"].rsplit("/", 1)[-1])
    schema = into if into is not None else Schema()
    for key, value in node.items():
        if key in _SKIP:
            continue
        if key not in _ATTRS:
            raise ValueError(f"JSON schema keyword {key!r} has no OpenAPI Schema field")
        if key in _ONE and isinstance(value, dict):
            value = to_spec(value, ref)
        elif key in _MANY:
            value = [to_spec(v, ref) for v in value]
        elif key in _MAP:
            value = {k: to_spec(v, ref) for k, v in value.items()}
        elif key == "type":
            value = [OpenAPIType(t) for t in value] if isinstance(value, list) else OpenAPIType(value)
        setattr(schema, _ATTRS[key], value)
    return schema


def inline_schema(model: type[BaseModel]) -> Schema:
    """``model``'s schema with the models it uses written out in place (no components)."""
    raw = model.model_json_schema()
    defs: dict[str, Any] = raw.get("$defs", {})

    def ref(name: str) -> Schema | Reference:
        return to_spec(defs[name], ref)

    schema = to_spec(raw, ref)
    assert isinstance(schema, Schema)
    return schema


class WireSchemaPlugin(PydanticSchemaPlugin):
    """Component schemas of ``service.schemas`` models from pydantic; other models as Litestar does."""

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: SchemaCreator) -> Schema:
        model = MODELS.get(getattr(field_definition.annotation, "__name__", ""))
        if model is None or model is not field_definition.annotation:
            return super().to_openapi_schema(field_definition, schema_creator)

        def ref(name: str) -> Schema | Reference:
            if name not in MODELS:
                raise ValueError(f"{model.__name__} uses {name}, which is not a model of {schemas.__name__}")
            return schema_creator.for_field_definition(FieldDefinition.from_annotation(MODELS[name]))

        # Registered before its fields are converted, so that a model can refer to itself.
        schema = schema_creator.schema_registry.get_schema_for_field_definition(field_definition)
        to_spec(model.model_json_schema(), ref, into=schema)
        schema.title = model.__name__  # with type object, this makes Litestar refer to the component
        return schema


# --- responses ------------------------------------------------------------------------------------

PROBLEMS = {
    400: "The request is malformed, e.g. its body is not valid JSON.",
    401: "No API key, or an unknown one (`WWW-Authenticate: Bearer`).",
    403: "The key's role is below the role this operation needs.",
    404: "No such classifier, version or job.",
    409: "The current state forbids this; `detail` says why. A promotion or rollback that lost a race to "
    "another pointer move also names `active_version`, the version active now.",
    410: "The version was pruned by the classifier's retention policy: its row and report remain, its files are "
    "gone, so it cannot be served, promoted or rolled back to.",
    413: "The request body is over the size limit (ENGRAM_MAX_BODY_BYTES).",
    415: "The body's Content-Type is not one this operation reads (application/json; learn also takes "
    "multipart/form-data; predict/binary takes application/x-npy, application/octet-stream or multipart/form-data).",
    422: "Well-formed but unusable input. `detail` says what to change; `errors` lists failed checks of the "
    "request, and `field`, `index` and `reason` name a bad sample or input item.",
    503: "The database (or the version's model) is unavailable; nothing was changed. Retry after "
    "`Retry-After` seconds. Predictions of versions already served do not need the database.",
}


def answers(
    status: int, body: Any, description: str, *problems: int, media_type: str = "application/json"
) -> dict[int, ResponseSpec]:
    """An operation's documented answers: ``status`` with ``body``, and problem+json for each of ``problems``.

    Handlers keep returning the application's dicts; this replaces the schema Litestar would derive from
    their ``dict[str, Any]`` annotation.
    """
    out = {status: ResponseSpec(body, generate_examples=False, description=description, media_type=media_type)}
    return {**out, **problem_answers(*problems)}


def problem_answers(*codes: int) -> dict[int, ResponseSpec]:
    """problem+json answers for each of ``codes``, described by ``PROBLEMS``."""
    return {
        code: ResponseSpec(schemas.Problem, generate_examples=False, description=PROBLEMS[code], media_type=PROBLEM)
        for code in codes
    }


# --- the learn request body -------------------------------------------------------------------------


def file_parts(description: str) -> Schema:
    """A multipart form's ``file`` field: one or more binary parts (learn uploads and binary predicts)."""
    return Schema(type=OpenAPIType.ARRAY, min_items=1, items=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY),
                  description=description)  # fmt: skip


def learn_request_body() -> RequestBody:
    """POST .../learn reads its body itself, JSON or a multipart form, so Litestar cannot describe it."""
    json_schema = inline_schema(schemas.LearnRequest)
    fields = json_schema.properties or {}
    form = Schema(
        type=OpenAPIType.OBJECT,
        properties={
            "task": fields["task"],
            "strategy": fields["strategy"],
            "retention": fields["retention"],
            "file": file_parts("one image per sample"),
            "label": Schema(
                type=OpenAPIType.ARRAY,
                min_items=1,
                items=Schema(type=OpenAPIType.STRING, min_length=1, max_length=128),
                description="the label of each file, in the same order",
            ),
        },
        required=["file", "label", "task"],
        additional_properties=False,  # unknown form fields are refused, as unknown JSON fields are
    )
    return RequestBody(
        required=True,
        description="JSON, or a multipart form with fields task, strategy, retention and one label per file",
        content={
            "application/json": OpenAPIMediaType(schema=json_schema),
            "multipart/form-data": OpenAPIMediaType(schema=form),
        },
    )


_LEARN_BODY = learn_request_body()


@dataclasses.dataclass
class LearnOperation(Operation):
    def __post_init__(self) -> None:
        self.request_body = _LEARN_BODY


def openapi_config() -> OpenAPIConfig:
    bearer = SecurityScheme(type="http", scheme="bearer", description="an API key; roles predict < learn < admin")
    return OpenAPIConfig(title="Engram", version="1", components=Components(security_schemes={"bearer": bearer}))
