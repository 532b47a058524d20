"""The OpenAPI document as served: every operation documents its problem+json answers.

Litestar documents what a handler returns on success and, for validation, a 400; it knows
nothing of the errors that :mod:`api.errors` maps from the domain (401, 403, 404, 409, 422,
503…). Rather than repeating a ``responses=`` table on some sixty handlers (which would drift),
the served document gives every operation a ``default`` response — "any other status" in OpenAPI
terms — of media type ``application/problem+json`` with the :data:`PROBLEM_SCHEMA`, and the
error responses Litestar does document (its validation 400) get the same media type and schema. Generated
clients and contract testers (Schemathesis) then know the shape of every refusal.
"""

from __future__ import annotations

from typing import Any, Final

from litestar import Request
from litestar.openapi.plugins import JsonRenderPlugin

from api.errors import PROBLEM_MEDIA_TYPE

__all__ = ["PROBLEM_SCHEMA", "ProblemDocumentingJsonPlugin", "with_problem_responses"]

_HTTP_METHODS: Final = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

PROBLEM_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "description": "RFC 9457 problem details. Never echoes input values.",
    "required": ["type", "title", "status", "code"],
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "code": {"type": "string", "description": "stable machine-readable code (docs/errors.md)"},
        "request_id": {"type": "string"},
    },
    "additionalProperties": True,
}


def with_problem_responses(document: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``document`` in which every operation has a problem+json ``default`` response."""
    reference = {"$ref": "#/components/schemas/Problem"}
    problem = {
        "description": "Refused or failed: a problem document with a stable `code`.",
        "content": {PROBLEM_MEDIA_TYPE: {"schema": reference}},
    }
    paths: dict[str, Any] = {}
    for path, item in document.get("paths", {}).items():
        paths[path] = dict(item)
        for method in _HTTP_METHODS:
            if method in item:
                operation = dict(item[method])
                responses = {
                    status: (_as_problem(response, reference) if status[:1] in "45" else response)
                    for status, response in operation.get("responses", {}).items()
                }
                operation["responses"] = {"default": problem, **responses}
                paths[path][method] = operation
    components = dict(document.get("components", {}))
    components["schemas"] = {**components.get("schemas", {}), "Problem": PROBLEM_SCHEMA}
    return {**document, "paths": paths, "components": components}


def _as_problem(response: dict[str, Any], reference: dict[str, str]) -> dict[str, Any]:
    """An error response Litestar documented (its 400) as the problem document it really is."""
    return {**response, "content": {PROBLEM_MEDIA_TYPE: {"schema": reference}}}


class ProblemDocumentingJsonPlugin(JsonRenderPlugin):
    """Serves ``/schema/openapi.json`` through :func:`with_problem_responses`."""

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return self.render_json(request, with_problem_responses(openapi_schema))
