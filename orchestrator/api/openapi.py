"""The OpenAPI 3.1 document, generated from the route table and the pydantic models in
``schemas.py`` (so the document cannot drift from what the handlers send and accept)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from orchestrator import __version__
from orchestrator.api.schemas import ErrorBody

_REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class QueryParam:
    """An optional query parameter: its name, JSON Schema and description."""

    name: str
    schema: Mapping[str, Any]
    description: str


@dataclass(frozen=True)
class RouteDoc:
    """One route as documented. ``responses`` maps a status to a model, or to a media type
    (str) for a non-JSON body."""

    method: str
    path: str
    operation_id: str
    summary: str
    responses: Mapping[int, type[BaseModel] | str]
    request: type[BaseModel] | None = None
    authenticated: bool = False
    tags: tuple[str, ...] = field(default=())
    query: tuple[QueryParam, ...] = field(default=())


def _params(path: str) -> list[dict[str, Any]]:
    names = [part[1:-1] for part in path.split("/") if part.startswith("{")]
    return [
        {"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names
    ]


def build_openapi(routes: Iterable[RouteDoc]) -> dict[str, Any]:
    routes = list(routes)
    models: set[type[BaseModel]] = {ErrorBody}
    for r in routes:
        if r.request is not None:
            models.add(r.request)
        models.update(m for m in r.responses.values() if not isinstance(m, str))
    ordered = sorted(models, key=lambda m: m.__name__)
    keyed = [(m, "validation" if _is_request(m, routes) else "serialization") for m in ordered]
    _, top = models_json_schema(keyed, ref_template=_REF)  # type: ignore[arg-type]
    schemas: dict[str, Any] = dict(top.get("$defs", {}))

    def ref(model: type[BaseModel]) -> dict[str, Any]:
        return {"$ref": _REF.format(model=model.__name__)}

    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        responses: dict[str, Any] = {}
        for status, body in sorted(r.responses.items()):
            if isinstance(body, str):
                content = {body: {"schema": {"type": "string"}}}
            else:
                content = {"application/json": {"schema": ref(body)}}
            responses[str(status)] = {"description": _describe(status), "content": content}
        errors = {400, 404, 500} | ({401, 403, 409, 504} if r.authenticated else set())
        if r.request is None and not r.query:
            errors -= {400}
        for status in sorted(errors - set(r.responses)):
            responses[str(status)] = {
                "description": _describe(status),
                "content": {"application/json": {"schema": ref(ErrorBody)}},
            }
        op: dict[str, Any] = {
            "operationId": r.operation_id,
            "summary": r.summary,
            "responses": responses,
        }
        if r.tags:
            op["tags"] = list(r.tags)
        params = _params(r.path) + [
            {
                "name": q.name,
                "in": "query",
                "required": False,
                "description": q.description,
                "schema": dict(q.schema),
            }
            for q in r.query
        ]
        if params:
            op["parameters"] = params
        if r.request is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref(r.request)}},
            }
        if r.authenticated:
            op["security"] = [{"bearer": []}]
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "failoverd",
            "version": __version__,
            "description": "Multi-region failover orchestrator: status, evidence, runs and"
            " operator commands. Mutating calls need a bearer token.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _is_request(model: type[BaseModel], routes: list[RouteDoc]) -> bool:
    return any(r.request is model for r in routes)


_DESCRIPTIONS = {
    200: "OK",
    202: "accepted and journaled",
    400: "bad input (the message says which field and why)",
    401: "missing or wrong bearer token",
    403: "mutating calls are disabled: no token configured",
    404: "no such service, run or route",
    409: "refused by the engine, or this instance is not the leader (see `leader`)",
    500: "an unexpected error (logged)",
    503: "not ready, or the state store did not answer",
    504: "the daemon did not answer in time; the command may still take effect",
}


def _describe(status: int) -> str:
    return _DESCRIPTIONS.get(status, "response")
