"""The OpenAPI 3.1 document of the dashboard's JSON API, made from ``api.ENDPOINTS``.

Made from the same table the routes are, so it always describes what is served (a
test checks every route is in it). Answers are described loosely (an object or an
array): their fields are the service's dicts, documented in docs/dashboard.md.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from celeriac import __version__

if TYPE_CHECKING:
    from celeriac.dashboard.api import Endpoint, Param

_ERROR = {"type": "object", "properties": {"error": {"type": "string"},
                                           "field": {"type": "string"}},
          "required": ["error"]}
_ERRORS = {
    "400": "Bad input; `field` names the wrong one.",
    "401": "Authentication required.",
    "403": "Missing or wrong CSRF token (POST).",
    "404": "No such task, worker, queue or dead letter.",
    "409": "The action is not possible in the present state.",
    "503": "The broker or the history's server failed; the error says which.",
}


def document(endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = _operation(endpoint)
    return {
        "openapi": "3.1.0",
        "info": {"title": "celeriac dashboard API", "version": __version__,
                 "description": "The JSON API the dashboard's pages use. Every POST needs "
                                "the X-CSRF-Token header (GET /api/csrf)."},
        "paths": paths,
        "components": {
            "schemas": {"Error": _ERROR},
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic"},
                "bearer": {"type": "http", "scheme": "bearer"},
                "csrf": {"type": "apiKey", "in": "header", "name": "X-CSRF-Token"},
            },
        },
    }


def _operation(endpoint: Endpoint) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": _operation_id(endpoint),
        "summary": endpoint.summary,
        "tags": [endpoint.tag],
    }
    parameters = [{"name": name, "in": "path", "required": True,
                   "schema": {"type": "string"}}
                  for name in re.findall(r"{(\w+)}", endpoint.path)]
    parameters += [{"name": p.name, "in": "query", "required": p.required,
                    "description": p.description, "schema": _schema(p)}
                   for p in endpoint.query]
    if parameters:
        operation["parameters"] = parameters
    if endpoint.body:
        operation["requestBody"] = {"required": any(p.required for p in endpoint.body),
                                    "content": {"application/json": {"schema": {
                                        "type": "object",
                                        "properties": {p.name: {**_schema(p),
                                                                "description": p.description}
                                                       for p in endpoint.body},
                                        "required": [p.name for p in endpoint.body
                                                     if p.required]}}}}
    if endpoint.stream:
        ok: dict[str, Any] = {"description": "Server-Sent Events.",
                              "content": {"text/event-stream": {"schema": {"type": "string"}}}}
    else:
        ok = {"description": "OK", "content": {"application/json": {
            "schema": {"type": endpoint.returns}}}}
    responses: dict[str, Any] = {"200": ok}
    for status, text in _ERRORS.items():
        if status == "403" and endpoint.method != "POST":
            continue
        responses[status] = {"description": text, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/Error"}}}}
    operation["responses"] = responses
    if endpoint.flower:
        operation["description"] = "An alias of Flower's endpoint of the same path."
    return operation


def _schema(param: Param) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": param.kind}
    if param.enum:
        schema["enum"] = list(param.enum)
    return schema


def _operation_id(endpoint: Endpoint) -> str:
    words = re.sub(r"[{}]", "", endpoint.path).strip("/").replace("-", "_").split("/")
    return "_".join([endpoint.method.lower(), *words[1:]])
