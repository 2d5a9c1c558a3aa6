"""``celeriac dashboard`` as a process: the bind rule, the startup line, restarts.

A dashboard process stopped (SIGTERM; then SIGINT, as Ctrl-C) and started again lists
the tasks it recorded before, from its history store (SQLite: the broker's file;
Redis: the broker's server). The tasks are seen through their task-sent events, so no
worker is needed.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from dash_harness import Servers, make_app, servers, wait_for, worker_env

AUTH = ("admin", "hunter2-not-shown")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def dashboard(env: dict[str, str], cwd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "celeriac", "-A", "dash_app", "dashboard",
                             *args], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_a_public_address_without_auth_refuses_to_start(tmp_path: Path) -> None:
    env = worker_env(f"sqlite:///{tmp_path / 'b.db'}", f"sqlite:///{tmp_path / 'b.db'}",
                     tmp_path)
    done = subprocess.run([sys.executable, "-m", "celeriac", "-A", "dash_app", "dashboard",
                           "--host", "0.0.0.0", "--port", str(free_port())], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("Error: refusing to serve the dashboard on 0.0.0.0 "
                                  "without authentication")


@pytest.fixture(params=["sqlite", "redis"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Servers]:
    where = servers(request.param, tmp_path)
    try:
        yield where
    finally:
        where.cleanup()


def test_a_restarted_dashboard_still_lists_the_tasks_from_before(
        place: Servers, tmp_path: Path) -> None:
    env = worker_env(place.broker, place.backend, tmp_path)
    env["CELERIAC_DASHBOARD_BASIC_AUTH"] = ":".join(AUTH)  # (not on the command line)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    tag = uuid.uuid4().hex[:8]
    app = make_app(place, task_send_sent_event=True)
    client = httpx.Client(base_url=url, auth=AUTH, timeout=10)
    process = dashboard(env, tmp_path, "--port", str(port))
    try:
        wait_for(lambda: _up(client), "the dashboard to answer", 30)
        sent = [app.send_task("dash.add", [i, i], queue=f"nobody-{tag}").id for i in range(3)]
        wait_for(lambda: _listed(client, tag) == sorted(sent), "the three tasks listed")

        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 0, stderr
        assert f"celeriac dashboard: http://127.0.0.1:{port}/ (auth: basic;" in stderr
        assert AUTH[1] not in stderr

        process = dashboard(env, tmp_path, "--port", str(port))
        wait_for(lambda: _up(client), "the dashboard to answer again", 30)
        assert _listed(client, tag) == sorted(sent)
        process.send_signal(signal.SIGINT)  # Ctrl-C stops it as cleanly
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 0, stderr
        assert "Traceback" not in stderr
    finally:
        client.close()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=30)
        app.close()


def _up(client: httpx.Client) -> bool:
    try:
        return client.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False


def _listed(client: httpx.Client, tag: str) -> list[str]:
    found = client.get("/api/tasks", params={"queue": f"nobody-{tag}"}).json()
    return sorted(task["id"] for task in found["tasks"])
