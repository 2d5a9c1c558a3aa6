"""Auth and CSRF over HTTP: a dashboard with Basic and token auth, one in proxy mode.

The dashboards run in-process on the memory broker (what is checked here is the HTTP
layer in front of the service; the brokers are covered by test_api.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from celeriac import App
from celeriac.dashboard.app import Dashboard
from celeriac.dashboard.auth import AuthConfig
from celeriac.dashboard.server import Background


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    app = App("auth-tests", broker="memory://", backend="memory://")
    server = Background(Dashboard(app, AuthConfig(basic="admin:pa55:word",
                                                  token="tok-123")).asgi).start()
    try:
        yield server.url
    finally:
        server.close()
        app.close()


def test_requests_without_credentials_get_401(served: str) -> None:
    with httpx.Client(base_url=served) as anonymous:
        for path in ("/api/overview", "/", "/tasks", "/metrics", "/static/dashboard.css",
                     "/api/openapi.json"):
            response = anonymous.get(path)
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"].startswith("Basic realm=")
            assert response.json() == {"error": "authentication required"}
        assert anonymous.get("/api/overview", auth=("admin", "pa55")).status_code == 401
        assert anonymous.get("/api/overview", headers={
            "Authorization": "Bearer tok-12"}).status_code == 401
        assert anonymous.post("/api/tasks/x/revoke").status_code == 401
        assert anonymous.get("/healthz").text == "live\n"  # open for load balancers
    with httpx.Client(base_url=served, auth=("admin", "pa55:word")) as user:
        assert user.get("/api/overview").status_code == 200
    with httpx.Client(base_url=served, headers={"Authorization": "Bearer tok-123"}) as bot:
        assert bot.get("/api/workers").status_code == 200


def test_a_post_without_the_right_csrf_token_gets_403(served: str) -> None:
    with httpx.Client(base_url=served, auth=("admin", "pa55:word")) as user:
        token = user.get("/api/csrf").json()["token"]
        body = {"rate": "5/s"}
        missing = user.post("/api/task-types/t/rate-limit", json=body)
        wrong = user.post("/api/task-types/t/rate-limit", json=body,
                          headers={"X-CSRF-Token": "0" * 64})
        for refused in (missing, wrong):
            assert refused.status_code == 403
            assert "CSRF" in refused.json()["error"]
        # The token of another identity (the bearer token's) is no use to this user
        with httpx.Client(base_url=served, headers={"Authorization": "Bearer tok-123"}) as bot:
            theirs = bot.get("/api/csrf").json()["token"]
        assert theirs != token
        assert user.post("/api/task-types/t/rate-limit", json=body,
                         headers={"X-CSRF-Token": theirs}).status_code == 403
        # The right one passes
        accepted = user.post("/api/task-types/t/rate-limit", json=body,
                             headers={"X-CSRF-Token": token})
        assert accepted.json() == {"ok": True, "name": "t", "rate": "5/s"}
        # A page's form sends it as a field
        form = user.post("/api/task-types/t/rate-limit", data={"rate": "6/s",
                                                               "csrf_token": token})
        assert form.json()["rate"] == "6/s"
        assert user.post("/api/task-types/t/rate-limit", data={
            "rate": "5/s", "csrf_token": "nope"}).status_code == 403
        page = user.get("/").text
        assert f'<meta name="csrf-token" content="{token}">' in page


def test_proxy_header_mode_trusts_the_header() -> None:
    app = App("proxy-tests", broker="memory://", backend="memory://")
    server = Background(Dashboard(app, AuthConfig(header="X-Forwarded-User")).asgi).start()
    try:
        with httpx.Client(base_url=server.url) as client:
            assert client.get("/api/overview").status_code == 401
            alice = {"X-Forwarded-User": "alice"}
            assert client.get("/api/overview", headers=alice).status_code == 200
            token = client.get("/api/csrf", headers=alice).json()["token"]
            bob = client.get("/api/csrf", headers={"X-Forwarded-User": "bob"}).json()
            assert bob["token"] != token
    finally:
        server.close()
        app.close()


def test_without_auth_only_loopback_host_names_are_answered() -> None:
    """A page on evil.example resolving to 127.0.0.1 (DNS rebinding) gets nothing."""
    app = App("host-tests", broker="memory://", backend="memory://")
    server = Background(Dashboard(app, AuthConfig()).asgi).start()
    try:
        with httpx.Client(base_url=server.url) as client:
            port = server.url.rsplit(":", 1)[1]
            for host in (f"127.0.0.1:{port}", f"localhost:{port}", "[::1]", "localhost"):
                assert client.get("/api/csrf", headers={"Host": host}).status_code == 200
            refused = client.get("/api/csrf", headers={"Host": f"evil.example:{port}"})
            assert refused.status_code == 403
            assert "localhost only" in refused.json()["error"]
    finally:
        server.close()
        app.close()
