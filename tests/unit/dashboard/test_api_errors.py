"""The API's error answers: each failure kind to its status, as JSON naming the field."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from celeriac.dashboard.api import _handler
from celeriac.dashboard.service import BadInput, Conflict, NotFound
from celeriac.errors import BrokerUnavailable

FAILURES: dict[str, Exception] = {
    "bad": BadInput("limit", "must be an integer"),
    "missing": NotFound("no task x in the history"),
    "conflict": Conflict("only a failed task is retried"),
    "down": BrokerUnavailable("redis://127.0.0.1:1/0 is unreachable"),
}


async def fail(request: Request) -> Any:
    raise FAILURES[request.path_params["kind"]]


def test_failures_become_json_errors_with_their_status() -> None:
    app = Starlette(routes=[Route("/{kind}", _handler(fail, stream=False))])

    async def ask() -> dict[str, tuple[int, Any]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return {kind: ((r := await client.get(f"/{kind}")).status_code, r.json())
                    for kind in FAILURES}

    answers = asyncio.run(ask())
    assert answers["bad"] == (400, {"error": "limit: must be an integer", "field": "limit"})
    assert answers["missing"] == (404, {"error": "no task x in the history"})
    assert answers["conflict"] == (409, {"error": "only a failed task is retried"})
    status, body = answers["down"]
    assert status == 503
    assert "unreachable" in body["error"]
